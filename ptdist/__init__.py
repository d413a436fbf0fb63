"""ptdist: distributed soft-prompt transfer experiments (Su et al., NAACL 2022)."""

__version__ = "0.1.0"
