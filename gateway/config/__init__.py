"""Configuration: the settings read from JOBGATE_* and the profile catalogue."""
