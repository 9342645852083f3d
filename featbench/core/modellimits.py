"""The bounds and name patterns of a featbench model file (:mod:`featbench.core.manifest`).

Every size a manifest gives decides an allocation somewhere, so each is bounded here; the
patterns say what a name in a manifest may be (an AU, a plain file or run name, a group).
"""

#: the smallest and largest face side (pixels) a manifest may ask faces to be aligned or fed at
MIN_SIDE, MAX_SIDE = 16, 1024
#: the largest code (feature) dimension a run may read
MAX_DIMS = 1 << 17
#: the most AUs, folds, units, tensor groups and vote members one manifest may hold
MAX_AUS, MAX_FOLDS, MAX_GROUPS, MAX_MEMBERS = 64, 64, 4096, 64
#: the largest hidden layer a manifest may describe (an LSTM's units, a transfer head's layer)
MAX_HIDDEN = 1 << 16
#: how deep votes may nest (a vote whose member is a vote...)
MAX_DEPTH = 4
#: the largest safetensors header read (JSON): featbench's own headers are far smaller
MAX_HEADER = 16 << 20
#: the most dimensions of one tensor
MAX_RANK = 8

#: safetensors dtype codes featbench reads -> bytes per element
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}
FLOATS = frozenset({"F16", "F32", "F64"})
INTS = frozenset({"I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64"})
NUMBERS = FLOATS | INTS | {"BOOL"}

#: an AU's name, as featbench writes it everywhere
AU_PATTERN = r"^AU\d{2}$"
#: a plain name: no folder separator, no leading dot, no control character
NAME_PATTERN = r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]{0,254}$"
#: a tensor group's name (the file ``<group>.safetensors`` of a run folder)
GROUP_PATTERN = r"^[A-Za-z0-9_+=-][A-Za-z0-9_+.=-]{0,119}$"
