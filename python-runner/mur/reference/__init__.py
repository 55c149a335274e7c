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

from .bf16 import SLOTS, round_nearest, round_stochastic
from .q8 import UNSIGNED
from .q8 import quantise as q8_quantise

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
    "sparseadam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
    "rprop": dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)),
    "asgd": dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0),
    # optax's (no torch.optim class): lr required, as optax's learning_rate.
    "lamb": dict(lr=None, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0),
    "lars": dict(lr=None, weight_decay=0.0, trust_coefficient=1e-3, eps=0.0, momentum=0.9, nesterov=False),
    # torch.optim.Adafactor's (eps[0] None: the parameter dtype's machine epsilon, as torch).
    "adafactor": dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0),
    # torch >= 2.9's Muon (2-D parameters only); adjust_lr_fn None is "original".
    "muon": dict(
        lr=1e-3,
        weight_decay=0.1,
        momentum=0.95,
        nesterov=True,
        ns_coefficients=(3.4445, -4.775, 2.0315),
        eps=1e-7,
        ns_steps=5,
        adjust_lr_fn=None,
    ),
    # optax.contrib.schedule_free_adamw's (torch.optim has none); betas[0] is its b1 (> 0).
    "schedule_free_adamw": dict(
        lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, weight_lr_power=2.0
    ),
}
# Optimizers whose weight decay multiplies theta (decoupled) rather than adding to g.
_DECOUPLED = ("adamw", "lion", "adafactor", "muon")
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
    if name == "sparseadam":
        # torch's order: m += (1-b1)(g - m), v += (1-b2)(g^2 - v); eps outside the bias correction.
        b1, b2 = h["betas"]
        m = s.setdefault("exp_avg", torch.zeros_like(p))
        v = s.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.add_((g - m) * (1 - b1))
        v.add_((g * g - v) * (1 - b2))
        return m / (v.sqrt() + h["eps"]), math.sqrt(1 - b2**t) / (1 - b1**t), 1.0
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
    if name == "adafactor":
        return _adafactor(g, p, s, h, t)
    if name == "muon":
        # torch.optim.Muon: momentum as lerps, NS of the (Nesterov) momentum, the lr adjustment by shape.
        if p.dim() != 2:
            raise ValueError(f"muon takes 2-D parameters only, got shape {tuple(p.shape)}")
        buf = s.setdefault("momentum_buffer", torch.zeros_like(p)).lerp_(g, 1 - h["momentum"])
        u = g.lerp(buf, h["momentum"]) if h["nesterov"] else buf
        return newton_schulz(u, h).to(p.dtype), _adjust_lr(h.get("adjust_lr_fn"), *p.shape), 1 - h["lr"] * wd
    raise ValueError(f"optimizer={name!r}: unknown")


def _rms(x):
    return x.norm().item() / math.sqrt(max(1, x.numel()))


def _adafactor(g, p, s, h, t):
    """torch.optim.Adafactor: for >= 2 dims the row means of g^2 (over the
    last dim) and the column means (over the one before), lerped by t^beta2_decay;
    a vector's whole. d = max(eps2, rms(p)) u / max(1, rms(u) / d) with
    u = g / sqrt(max(v, eps1^2)); scale min(lr, 1/sqrt(t)) / lr; decay 1 - lr wd."""
    eps1, eps2 = h["eps"]
    eps1 = torch.finfo(p.dtype).eps if eps1 is None else eps1
    w = t ** h["beta2_decay"]
    g2 = g * g
    if g.dim() >= 2:
        row = s.setdefault("row_var", g.new_zeros(*g.shape[:-1], 1)).lerp_(g2.mean(-1, keepdim=True), w)
        col = s.setdefault("col_var", g.new_zeros(*g.shape[:-2], 1, g.shape[-1])).lerp_(g2.mean(-2, keepdim=True), w)
        v = row * col / row.mean(-2, keepdim=True).clamp(min=eps1)
    else:
        v = s.setdefault("variance", torch.zeros_like(g)).lerp_(g2, w).clone()
    u = g / v.clamp(min=eps1 * eps1).sqrt()
    k = max(eps2, _rms(p)) / max(1.0, _rms(u) / h["d"])
    lr = h["lr"]
    return u * k, (min(lr, 1 / math.sqrt(t)) / lr if lr > 0 else 0.0), 1 - lr * h["weight_decay"]


def newton_schulz(u, h):
    """Muon's orthogonalisation, as torch's _zeropower_via_newtonschulz but in
    float64 (torch: bfloat16): a tall matrix is transposed (and back),
    X = u / max(||u||_F, eps), then ns_steps times A = X X^T, X = a X + (b A + c A A) X."""
    a, b, c = h["ns_coefficients"]
    tall = u.shape[0] > u.shape[1]
    x = u.double().T if tall else u.double()
    x = x / x.norm().clamp(min=h["eps"])
    for _ in range(int(h["ns_steps"])):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def _adjust_lr(fn, rows, cols):
    """torch's _adjust_lr ratio for a rows x cols matrix."""
    if fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if fn == "spectral_unclamped":
        return math.sqrt(rows / cols)
    return math.sqrt(max(1, rows / cols))


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


def _warmup(k, w):
    """optax's warmup_constant_schedule(0, lr, w) at count k, over lr: min(k, w) / w (1 at w = 0)."""
    return min(k, w) / w if w > 0 else 1.0


def schedule_free(rule, y, g, s, h, t):
    """One Schedule-Free AdamW step (optax.contrib.schedule_free_adamw) with the
    rule acting on z; y (the parameter) is updated in place. x = (y - (1-b1) z) / b1
    is derived, as optax does. The base step takes the warmup at t-1, the
    averaging weight max_lr^p at t (optax's two schedule counts)."""
    b1, b2 = h["betas"]
    w = h["warmup_steps"]
    z = s.setdefault("z", y.clone())
    v = s.setdefault("exp_avg_sq", torch.zeros_like(y))
    v.mul_(b2).add_((1 - b2) * g * g)
    d = g / ((v / (1 - b2**t)).sqrt() + h["eps"]) + h["weight_decay"] * y
    z_new = z - change(rule, z, d, h, _warmup(t - 1, w), s)
    max_lr = max(s.get("max_lr", 0.0), h["lr"] * _warmup(t, w))
    weight = max_lr ** h["weight_lr_power"]
    total = s.get("weight_sum", 0.0) + weight
    c = weight / total if total > 0 else 0.0  # optax: nan_to_num(0 / 0) = 0
    s["max_lr"], s["weight_sum"] = max_lr, total
    x = (y - (1 - b1) * z) / b1
    y.copy_(b1 * ((1 - c) * x + c * z_new) + (1 - b1) * z_new)
    z.copy_(z_new)


def eval_params(y, z, b1):
    """Schedule-Free's evaluation point x = (y - (1 - b1) z) / b1 (optax.contrib.schedule_free_eval_params)."""
    return (y - (1 - b1) * z) / b1


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

    def __init__(self, params, optimizer="adam", rule="hybrid", state_dtype="float32", state_seed=0, **hyperparameters):
        """state_dtype="bfloat16" stores every full-size slot as the native engine does
        (mur/reference/bf16.py: stochastic rounding from state_seed, the parameter's
        flat index and its step); d is computed from the new state before rounding.
        (LAMB's engine kernel reads its moments back after rounding them; here d uses
        the unrounded ones: within one bfloat16 ulp of the moments.)
        state_dtype="q8" quantises every full-size slot after each step as the engine's
        8-bit state (mur/reference/q8.py: blocks of 256, the dynamic map); a fill is
        stored exactly (absmax |v|, the code of 1)."""
        if state_dtype not in ("float32", "bfloat16", "q8"):
            raise ValueError(f"state_dtype={state_dtype!r}: must be 'float32', 'bfloat16' or 'q8'")
        self.state_dtype, self.state_seed = state_dtype, state_seed
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
    def eval(self):
        """schedule_free_adamw: the parameters take x (eval_params of y and z); step() refuses until train()."""
        self._schedule_free_only()
        if not getattr(self, "_train_values", None):
            self._train_values = {}
            for group in self.param_groups:
                for p in group["params"]:
                    self._train_values[p] = p.detach().clone()
                    if "z" in self.state[p]:
                        p.copy_(eval_params(p, self.state[p]["z"], group["betas"][0]))
        return self

    @torch.no_grad()
    def train(self, mode=True):
        """schedule_free_adamw: the parameters get y back (bit for bit)."""
        if not mode:
            return self.eval()
        self._schedule_free_only()
        for p, y in (getattr(self, "_train_values", None) or {}).items():
            p.copy_(y)
        self._train_values = None
        return self

    def _schedule_free_only(self):
        if self.optimizer_name != "schedule_free_adamw":
            raise ValueError(
                f"train()/eval(): only schedule_free_adamw has an evaluation point, not {self.optimizer_name}"
            )

    @torch.no_grad()
    def step(self, closure=None):
        if getattr(self, "_train_values", None):
            raise RuntimeError("step() in eval mode: the parameters hold x, not y; call train() first")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                st = self.state[p]
                st["step"] = st.get("step", 0) + 1
                if self.rule_name == "exp_sign" and "bound" not in st:
                    st["bound"] = group["p_scale"] * p.pow(2).mean().sqrt()
                if p.grad.is_sparse:
                    self._rows_step(p, st, group)
                    continue
                if self.optimizer_name == "sparseadam":
                    raise RuntimeError("sparseadam takes sparse gradients only (as torch.optim.SparseAdam)")
                if self.state_dtype == "bfloat16":  # first fills other than 0, rounded to nearest (as the engine)
                    if self.optimizer_name == "rprop" and "step_size" not in st:
                        st["step_size"] = round_nearest(torch.full_like(p, group["lr"]))
                    if self.optimizer_name == "adagrad" and "sum" not in st:
                        st["sum"] = round_nearest(torch.full_like(p, group["initial_accumulator_value"]))
                if self.optimizer_name == "schedule_free_adamw":
                    schedule_free(self.rule_name, p, p.grad, st, group, st["step"])
                    continue
                d, scale, decay = direction(self.optimizer_name, p.grad, p, st, group, st["step"])
                if decay != 1.0:
                    p.mul_(decay)
                p.sub_(change(self.rule_name, p, d, group, scale, st))
                average(self.optimizer_name, p, st, group, st["step"])
                if self.state_dtype == "bfloat16":
                    for k, name in enumerate(SLOTS.get(self.optimizer_name, [])):  # adafactor: the engine refuses
                        if name in st:
                            st[name] = round_stochastic(st[name], self.state_seed, index - 1, st["step"], k)
                if self.state_dtype == "q8":
                    for name in SLOTS.get(self.optimizer_name, []):
                        if name in st:
                            st[name] = q8_quantise(st[name], name in UNSIGNED)
        return loss

    def _rows_step(self, p, st, group):
        """A sparse (torch.sparse_coo, one sparse dimension) gradient: the step
        of the touched rows (coalesced: duplicates summed, as torch), every
        other row of p and of the state unchanged; the rule's bound stays the
        whole tensor's."""
        name = self.optimizer_name
        if name not in _ROW_SLOTS:
            raise RuntimeError(f"{name} does not take sparse gradients (sparseadam, sgd and adagrad do)")
        g = p.grad.coalesce()
        rows = g.indices()[0]
        for k, first in _ROW_SLOTS[name].items():
            st.setdefault(k, torch.full_like(p, group[first] if isinstance(first, str) else first))
        sub = {k: st[k][rows] for k in _ROW_SLOTS[name]}
        pr = p[rows]
        d, scale, decay = direction(name, g.values(), pr, sub, group, st["step"])
        for k, v in sub.items():
            st[k][rows] = v
        pr = pr * decay
        p[rows] = pr - change(self.rule_name, pr, d, group, scale, st)


# The slots of the optimizers that take sparse gradients, with their first values
# (a number, or the hyperparameter that gives it); sgd only without momentum.
_ROW_SLOTS = {
    "sparseadam": {"exp_avg": 0.0, "exp_avg_sq": 0.0},
    "adagrad": {"sum": "initial_accumulator_value"},
    "sgd": {},
}
