"""Action unit names, the AU sets of each data set and protocol, and the AU -> region map.

AUs are named ``AU01`` ... ``AU26`` everywhere in featbench (zero-padded, as OpenFace does).
Foreign spellings (DISFA's ``au1``, ABAW's ``AU1``, a bare ``1``) are converted once, here.
"""

import re

from featbench.core.errors import UsageError

#: the 12 AUs of DISFA and of Method A (the paper's protocol)
DISFA_AUS = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU09",
             "AU12", "AU15", "AU17", "AU20", "AU25", "AU26")
#: the 8 AUs of the literature's 3-fold DISFA protocol
LITERATURE_AUS = ("AU01", "AU02", "AU04", "AU06", "AU09", "AU12", "AU25", "AU26")
#: the 12 AUs of the ABAW3 AU track (Aff-Wild2), Method B
AFFWILD2_AUS = ("AU01", "AU02", "AU04", "AU06", "AU07", "AU10",
                "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
#: the 12 AUs of BP4D-Spontaneous's protocol (every paper's 3-fold BP4D table)
BP4D_AUS = ("AU01", "AU02", "AU04", "AU06", "AU07", "AU10",
            "AU12", "AU14", "AU15", "AU17", "AU23", "AU24")
#: the AUs BP4D codes with an intensity 0-5 (FERA 2015's intensity files)
BP4D_INTENSITY_AUS = ("AU06", "AU10", "AU12", "AU14", "AU17")
#: every AU featbench knows: the union of DISFA's, Aff-Wild2's and BP4D's
ALL_AUS = tuple(sorted(set(DISFA_AUS) | set(AFFWILD2_AUS) | set(BP4D_AUS)))

#: face regions, cut from the aligned landmarks (PROTOCOL.md): upper half, middle, lower half
REGIONS = ("upper", "middle", "lower")
#: the region in which each AU shows (FACS). The paper's map for its 12 AUs is
#: upper = 1, 2, 4, 5, 6; middle = 9; lower = 12, 15, 17, 20, 25, 26. Aff-Wild2's extra AUs
#: follow FACS: AU07 (lids) upper, AU10 (upper lip raiser) and AU23 / AU24 (lips) lower;
#: BP4D's AU14 (dimpler, at the lip corners) lower.
AU_REGION = {
    "AU01": "upper", "AU02": "upper", "AU04": "upper", "AU05": "upper", "AU06": "upper",
    "AU07": "upper",
    "AU09": "middle",
    "AU10": "lower", "AU12": "lower", "AU14": "lower", "AU15": "lower", "AU17": "lower",
    "AU20": "lower",
    "AU23": "lower", "AU24": "lower", "AU25": "lower", "AU26": "lower",
}

_AU_RE = re.compile(r"^\s*(?:au)?\s*0*(\d{1,2})\s*$", re.IGNORECASE)


def au_name(value):
    """Return the canonical ``AUnn`` name of an AU given as ``1``, ``"au1"``, ``"AU01"``...

    Raises
    ------
    UsageError
        If ``value`` is not an AU number featbench knows.
    """
    m = _AU_RE.match(str(value))
    if not m:
        raise UsageError(f"not an action unit: {value!r} (expected e.g. AU01, au1 or 1)")
    name = f"AU{int(m.group(1)):02d}"
    if name not in ALL_AUS:
        raise UsageError(f"unknown action unit {value!r}; featbench knows {', '.join(ALL_AUS)}")
    return name


def au_number(name):
    """Return the integer of an AU name: ``au_number("AU04") == 4``."""
    return int(au_name(name)[2:])


def region_of(au):
    """Return the face region ("upper", "middle" or "lower") in which ``au`` shows."""
    return AU_REGION[au_name(au)]
