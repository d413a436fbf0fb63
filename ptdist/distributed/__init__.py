"""How ptdist runs over processes: the process group, a process's place in it (`Shard`) and
its collectives (`group.py`), DeepSpeed's configs (`ds_config.py`) and its just-in-time built
ops (`op_builds.py`). Below the model-running layers, which all use it."""
