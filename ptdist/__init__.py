"""ptdist: distributed soft-prompt transfer experiments (Su et al., NAACL 2022)."""

from ptdist import logs as _logs

__version__ = "0.1.0"

_logs.configure()  # the ``ptdist`` logger's one handler: progress and warnings on stderr
