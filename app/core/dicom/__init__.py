"""DICOM encoding helpers every job uses: the indexed-attribute table, DICOM JSON, transfer syntax facts, UID rules and
normalised values."""
