"""python -m mur.validate: kept as the documented entry point, but the
validation trains Fashion-MNIST models (mur_lab.models, mur_lab.data), so it
lives in the lab distribution; install it with `pip install ./python-runner/lab`."""

try:
    from mur_lab.validate import main
except ImportError as e:  # only the lab's absence is explained; other errors surface as they are
    if e.name is None or not e.name.startswith("mur_lab"):
        raise
    raise SystemExit("mur.validate needs the lab package: pip install ./python-runner/lab (mur-lab)") from e

if __name__ == "__main__":
    raise SystemExit(main())  # main's return value is the exit status (1: a comparison failed)
