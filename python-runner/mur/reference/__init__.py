"""mur.reference: every optimizer x rule of docs/update-rules.md in plain torch.

The second framework of the cross-framework validation, and usable alone
(no server) in any dtype:

    opt = mur.reference.Optimizer(model.parameters(), optimizer="adam", rule="hybrid", lr=1e-3)

Three flags, off by default (torch's formulas), reproduce other frameworks'
placements (docs/frameworks.md): eps_before_correction (adam, adamw: Keras),
eps_in_sqrt (rmsprop, adagrad: optax, Keras), lr_in_momentum (sgd, rmsprop:
Keras; optax's rmsprop with momentum).
"""

import math

import torch

# torch's defaults per optimizer (lr None: required, as torch.optim.SGD).
DEFAULTS = {
    "sgd": dict(lr=None, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, lr_in_momentum=False),
    "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, eps_before_correction=False),
    "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, eps_before_correction=False),
    "adagrad": dict(
        lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False
    ),
    "rmsprop": dict(
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        eps_in_sqrt=False,
        lr_in_momentum=False,
    ),
    "adamax": dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    "nadam": dict(
        lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3, decoupled_weight_decay=False
    ),
    "radam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False),
    "adadelta": dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0),
    "lion": dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0),
    "rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)),
    "asgd": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0),
    # optax's (no torch.optim class): lr required, as optax's learning_rate.
    "lamb": dict(lr=None, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0),
    "lars": dict(lr=None, weight_decay=0.0, trust_coefficient=1e-3, eps=0.0, momentum=0.9, nesterov=False),
}
# Optimizers whose weight decay multiplies theta (decoupled) rather than adding to g.
_DECOUPLED = ("adamw", "lion")
LR_OUT_FACTOR = 10.0  # lr_out defaults to 10 x lr
RULE_DEFAULTS = {
    "additive": {},
    "multiplicative": dict(lr_in=1.0, lr_out=None),
    "hybrid": dict(lr_in=1.0, lr_out=None, gamma=0.9),
    "exp_sign": dict(g_bound=10.0, p_scale=3.0),
}


def _root(x, h):
    """sqrt(x) + eps (torch), or sqrt(x + eps) with eps_in_sqrt (optax, Keras)."""
    return (x + h["eps"]).sqrt() if h.get("eps_in_sqrt") else x.sqrt() + h["eps"]


def _per_lr(step, h):
    """lr_in_momentum: d is the step the buffer makes divided by the current lr,
    so that the additive rule (eta = lr) subtracts exactly that step; 0 at lr 0."""
    return step / h["lr"] if h["lr"] > 0 else torch.zeros_like(step)


def direction(name, g, p, s, h, t):
    """(d, scale, decay) for one parameter; updates the state dict ``s`` in place.
    ASGD's average follows the new parameter: average() after the rule."""
    wd = h.get("weight_decay", 0.0)
    decoupled = name in _DECOUPLED or h.get("decoupled_weight_decay", False)
    if not decoupled and name != "lamb" and wd != 0:  # lamb adds wd theta to its update (below)
        g = g + wd * p
    decay = 1 - h["lr"] * wd if decoupled else 1.0  # torch >= 2.2's decoupled_weight_decay (NAdam, RAdam)
    if name == "sgd":
        mu = h["momentum"]
        if mu == 0:
            return g, 1.0, 1.0
        if h.get("lr_in_momentum"):
            # Keras's velocity (positive): buf = mu buf + lr g; torch's first copy and dampening kept.
            lg = h["lr"] * g
            if "momentum_buffer" not in s:
                s["momentum_buffer"] = lg.clone()
            else:
                s["momentum_buffer"].mul_(mu).add_(lg, alpha=1 - h["dampening"])
            buf = s["momentum_buffer"]
            return _per_lr(lg + mu * buf if h["nesterov"] else buf.clone(), h), 1.0, 1.0
        if "momentum_buffer" not in s:
            s["momentum_buffer"] = g.clone()
        else:
            s["momentum_buffer"].mul_(mu).add_(g, alpha=1 - h["dampening"])
        buf = s["momentum_buffer"]
        return (g + mu * buf if h["nesterov"] else buf.clone()), 1.0, 1.0
    if name in ("adam", "adamw"):
        b1, b2 = h["betas"]
        m = s.setdefault("exp_avg", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
        v = s.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(b2).addcmul_(g, g, value=1 - b2)
        if h["amsgrad"]:
            v = torch.maximum(s.setdefault("max_exp_avg_sq", torch.zeros_like(p)), v, out=s["max_exp_avg_sq"])
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        if h.get("eps_before_correction"):  # Keras: eps added to sqrt(v), then the correction
            d = m * math.sqrt(bc2) / (v.sqrt() + h["eps"])
        else:
            d = m / (v.sqrt() / math.sqrt(bc2) + h["eps"])  # m is not bias-corrected inside d
        return d, 1 / bc1, (1 - h["lr"] * wd) if name == "adamw" else 1.0
    if name == "adagrad":
        acc = s.setdefault("sum", torch.full_like(p, h["initial_accumulator_value"])).addcmul_(g, g)
        return g / _root(acc, h), 1 / (1 + (t - 1) * h["lr_decay"]), 1.0
    if name == "rmsprop":
        a = h["alpha"]
        sq = s.setdefault("square_avg", torch.zeros_like(p)).mul_(a).addcmul_(g, g, value=1 - a)
        if h["centered"]:
            ga = s.setdefault("grad_avg", torch.zeros_like(p)).mul_(a).add_(g, alpha=1 - a)
            avg = _root(sq - ga * ga, h)
        else:
            avg = _root(sq, h)
        if h["momentum"] > 0 and h.get("lr_in_momentum"):
            buf = s.setdefault("momentum_buffer", torch.zeros_like(p)).mul_(h["momentum"]).add_(h["lr"] * g / avg)
            return _per_lr(buf, h), 1.0, 1.0
        if h["momentum"] > 0:
            buf = s.setdefault("momentum_buffer", torch.zeros_like(p)).mul_(h["momentum"]).add_(g / avg)
            return buf.clone(), 1.0, 1.0
        return g / avg, 1.0, 1.0
    if name == "adamax":
        b1, b2 = h["betas"]
        m = s.setdefault("exp_avg", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
        u = s.setdefault("exp_inf", torch.zeros_like(p))
        torch.maximum(u * b2, g.abs() + h["eps"], out=u)
        return m / u, 1 / (1 - b1**t), 1.0
    if name == "nadam":
        b1, b2 = h["betas"]
        psi = h["momentum_decay"]
        mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu1 = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        s["mu_product"] = s.get("mu_product", 1.0) * mu
        prod = s["mu_product"]
        m = s.setdefault("exp_avg", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
        v = s.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt() + h["eps"]
        return (1 - mu) / (1 - prod) * g / denom + mu1 / (1 - prod * mu1) * m / denom, 1.0, decay
    if name == "radam":
        b1, b2 = h["betas"]
        m = s.setdefault("exp_avg", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
        v = s.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(b2).addcmul_(g, g, value=1 - b2)
        bc2 = 1 - b2**t
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / bc2
        if rho > 5:
            rect = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            d = m * rect * math.sqrt(bc2) / (v.sqrt() + h["eps"])
        else:
            d = m.clone()
        return d, 1 / (1 - b1**t), decay
    if name == "adadelta":
        rho, eps = h["rho"], h["eps"]
        sq = s.setdefault("square_avg", torch.zeros_like(p)).mul_(rho).addcmul_(g, g, value=1 - rho)
        acc = s.setdefault("acc_delta", torch.zeros_like(p))
        d = (acc + eps).sqrt() / (sq + eps).sqrt() * g
        acc.mul_(rho).addcmul_(d, d, value=1 - rho)
        return d, 1.0, 1.0
    if name == "lion":
        b1, b2 = h["betas"]
        m = s.setdefault("exp_avg", torch.zeros_like(p))
        d = (b1 * m + (1 - b1) * g).sign()
        m.mul_(b2).add_(g, alpha=1 - b2)
        return d, 1.0, decay
    if name == "rprop":
        # torch's step is sign(g') step_size; d carries it in units of lr (the additive rule multiplies by lr).
        eta_minus, eta_plus = h["etas"]
        lo, hi = h["step_sizes"]
        prev = s.setdefault("prev", torch.zeros_like(p))
        size = s.setdefault("step_size", torch.full_like(p, h["lr"]))
        sg = (g * prev).sign()
        factor = torch.where(
            sg > 0, torch.full_like(p, eta_plus), torch.where(sg < 0, torch.full_like(p, eta_minus), torch.ones_like(p))
        )
        size.mul_(factor).clamp_(lo, hi)
        prev.copy_(torch.where(sg < 0, torch.zeros_like(g), g))
        return _per_lr(prev.sign() * size, h), 1.0, 1.0
    if name == "asgd":
        # torch's ASGD: theta (1 - lambd eta) - eta g' with eta (and mu, in average()) of the previous step.
        lr, lambd = h["lr"], h["lambd"]
        eta = s.setdefault("eta", torch.tensor(lr, dtype=p.dtype))
        s.setdefault("mu", torch.tensor(1.0, dtype=p.dtype))
        s.setdefault("ax", torch.zeros_like(p))
        used = eta.item()
        eta.fill_(lr / (1 + lambd * lr * t) ** h["alpha"])
        return g, used / lr if lr > 0 else 0.0, 1 - lambd * used
    if name == "lamb":
        # optax.lamb: Adam's corrected update plus wd theta, times ||theta|| / ||u||.
        b1, b2 = h["betas"]
        m = s.setdefault("exp_avg", torch.zeros_like(p)).mul_(b1).add_(g, alpha=1 - b1)
        v = s.setdefault("exp_avg_sq", torch.zeros_like(p)).mul_(b2).addcmul_(g, g, value=1 - b2)
        u = m / (1 - b1**t) / ((v / (1 - b2**t)).sqrt() + h["eps"]) + wd * p
        return u * _trust_ratio(p, u, 1.0, 0.0), 1.0, 1.0
    if name == "lars":
        # optax.lars: (g + wd theta) times tc ||theta|| / (||u|| + eps), then a trace of the lr-scaled steps.
        lw = h["lr"] * g * _trust_ratio(p, g, h["trust_coefficient"], h["eps"])
        buf = s.setdefault("momentum_buffer", torch.zeros_like(p)).mul_(h["momentum"]).add_(lw)
        return _per_lr(lw + h["momentum"] * buf if h["nesterov"] else buf.clone(), h), 1.0, 1.0
    raise ValueError(f"optimizer={name!r}: unknown")


def _trust_ratio(p, u, tc, eps):
    """optax's scale_by_trust_ratio: tc ||p|| / (||u|| + eps), 1 when either norm is 0."""
    pn, un = p.norm().item(), u.norm().item()
    return 1.0 if pn == 0 or un == 0 else tc * pn / (un + eps)


def average(name, p, s, h, t):
    """After the rule: ASGD's ax follows the new parameter with this step's mu
    (ax = p while mu is 1), then mu takes the next step's value."""
    if name != "asgd":
        return
    mu = s["mu"].item()
    if mu != 1:
        s["ax"].add_((p - s["ax"]) * mu)
    else:
        s["ax"].copy_(p)
    s["mu"].fill_(1 / max(1, t - h["t0"]))


def change(rule, p, d, h, scale, rs):
    """The change xi subtracted from p (theta_t = theta_{t-1} - xi)."""
    eta = h["lr"] * scale
    if rule == "additive":
        return eta * d
    # lr_out not given: LR_OUT_FACTOR x lr, as the server (docs/update-rules.md, section 6).
    eta_out = (h["lr_out"] if h.get("lr_out") is not None else LR_OUT_FACTOR * h["lr"]) * scale
    if rule == "multiplicative":
        return eta_out * p.abs() * torch.tanh(h["lr_in"] * d)
    if rule == "hybrid":
        gm = h["gamma"]
        return gm * eta_out * p.abs() * torch.tanh(h["lr_in"] * d) + (1 - gm) * eta * d
    if rule == "exp_sign":
        bound = rs["bound"]
        new = p * torch.exp(-eta * p.sign() * d.clamp(-h["g_bound"], h["g_bound"]))
        return p - torch.maximum(torch.minimum(new, bound), -bound)
    raise ValueError(f"rule={rule!r}: unknown")


class Optimizer(torch.optim.Optimizer):
    """optimizer x rule, in-process, in the parameters' own dtype."""

    def __init__(self, params, optimizer="adam", rule="hybrid", **hyperparameters):
        if optimizer not in DEFAULTS:
            raise ValueError(f"optimizer={optimizer!r}: unknown (one of {', '.join(DEFAULTS)})")
        if rule not in RULE_DEFAULTS:
            raise ValueError(f"rule={rule!r}: unknown (one of {', '.join(RULE_DEFAULTS)})")
        defaults = {**DEFAULTS[optimizer], **RULE_DEFAULTS[rule]}
        for k, v in hyperparameters.items():
            if k not in defaults:
                raise ValueError(f"{k}={v!r}: not a hyperparameter of {optimizer} with the {rule} rule")
        defaults.update(hyperparameters)
        if defaults["lr"] is None:
            raise ValueError(f"lr: required by {optimizer}")
        self.optimizer_name, self.rule_name = optimizer, rule
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                st["step"] = st.get("step", 0) + 1
                if self.rule_name == "exp_sign" and "bound" not in st:
                    st["bound"] = group["p_scale"] * p.pow(2).mean().sqrt()
                d, scale, decay = direction(self.optimizer_name, p.grad, p, st, group, st["step"])
                if decay != 1.0:
                    p.mul_(decay)
                p.sub_(change(self.rule_name, p, d, group, scale, st))
                average(self.optimizer_name, p, st, group, st["step"])
        return loss
