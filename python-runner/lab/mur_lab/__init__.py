"""mur_lab: what is built on the `mur` library but is not part of it — the
Fashion-MNIST demo (`python -m mur_lab.demo`), cross-framework validation
(`python -m mur.validate`), end-to-end benchmarks and the paper reproduction
(`python -m mur_lab.experiments.reproduce`)."""
