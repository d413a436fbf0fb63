"""Planning before anything runs: what the cluster offers (`resources.py`), what each model's
run holds and where it fits (`plans.py`, on the cost model `cost_model.py` and the least-compute
placement `placement.py`), and a dry run's estimate and schedule (`estimate.py`,
`schedule.py`)."""
