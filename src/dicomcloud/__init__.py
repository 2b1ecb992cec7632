"""dicomcloud: a scalable cloud DICOMweb archive."""

__version__ = "0.1.0"
