"""Row-sparse gradients (docs/data-path.md, "Row-sparse gradients"): a
torch.sparse_coo gradient with one sparse dimension (nn.Embedding(sparse=True))
travels as its coalesced row indices and those rows' values, on every plane;
the server steps those rows only and answers their new values."""

import torch


def check_sparse_grad(label, p):
    """Refuses a sparse gradient the wire cannot carry, before anything is sent."""
    g = p.grad
    if g.layout != torch.sparse_coo:
        raise TypeError(f"parameter {label}: {g.layout} gradients are not supported (torch.sparse_coo is)")
    if g.sparse_dim() != 1 or p.dim() == 0:
        raise TypeError(
            f"parameter {label}: a sparse gradient must be sparse in its first dimension only (rows), "
            f"this one has {g.sparse_dim()} sparse dimensions"
        )
    if g.shape != p.shape:
        raise ValueError(f"parameter {label}: gradient of shape {tuple(g.shape)}, parameter is {tuple(p.shape)}")
    if p.dtype != torch.float32:
        raise TypeError(f"parameter {label}: sparse gradients need a float32 parameter, this one is {p.dtype}")


def sparse_parts(g, negate=False):
    """(row indices as a list, values [nnz, *row_shape] float32 contiguous) of
    a sparse gradient, coalesced as torch's sparse optimizers coalesce it
    (sorted, duplicate rows summed); -values for a maximizing group."""
    g = g.coalesce()
    values = g.values().detach().to(dtype=torch.float32, device="cpu")
    if negate:
        values = values.neg()
    return g.indices()[0].tolist(), values.contiguous()


def write_rows(p, rows, values):
    """The server's new values of `rows` (flat float32, packed) into parameter p."""
    if rows:
        p.view(p.shape[0], -1)[torch.tensor(rows, dtype=torch.long)] = values.view(len(rows), -1)
