"""``python -m dve_kernels.train``: train DVE embeddings, evaluate them and draw them (see ``--help``)."""

from .loop import main

if __name__ == "__main__":
    raise SystemExit(main())
