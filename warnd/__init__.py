"""warnd: get a warning to every village, household and responsible official — and know who got it."""

__version__ = "0.1.0"
