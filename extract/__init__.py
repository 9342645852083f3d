"""Stage 1 of featbench: fc-layer codes of pretrained networks, written to HDF5.

============================ ===========================================================
module                       what it holds
============================ ===========================================================
:mod:`extract.registry`      the backbone specs (:class:`~extract.registry.BackboneSpec`)
:mod:`extract.nets`          networks no library ships: ZFNet, CNN-F/M/S, VGG-Face
:mod:`extract.weights`       imagenet / random / file weights, VGG-Face and MatConvNet converters
:mod:`extract.store`         the HDF5 feature file (DESIGN.md contract), resumable
:mod:`extract.extractor`     :func:`~extract.extractor.extract_features`, the batched loop
:mod:`extract.bench`         featbench vs forward-alone vs hand-written loop frames/s
============================ ===========================================================

Importing this package is cheap: torch, torchvision, timm, dlib and cv2 are imported inside the
functions that need them.
"""
