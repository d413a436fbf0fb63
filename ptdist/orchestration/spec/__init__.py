"""Reading specs: a sweep spec or a study (YAML), validated whole before anything is scheduled
(`sweep_spec.py`, `study_spec.py`), and the presets that ship with ptdist, read by name
(`spec_presets.py`)."""
