"""One file per schema revision, named NNNN_intent.py, with explicit revision ids "0001", "0002", ..."""
