"""Equal-budget tuning of one optimizer x rule cell with Optuna.

Every cell gets the same number of trials. The first `n_random` are drawn
independently from the rule's space (Optuna's TPE starts with random
sampling), so they double as the robustness sample: "the share of random
configurations that train" is measured on them, at no extra cost. A trial
whose run diverges (non-finite loss or parameters) is told to Optuna as
pruned: it never becomes the best, and it is counted as diverged, not given
a placeholder score. A run the server fails with an error (MurError) is
told as failed and recorded with its message, apart from both.
"""

import time

import optuna

import mur
from mur_lab.experiments import spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)


def tune(objective, rule, lr_range, n_trials, n_random, seed):
    """objective(config) -> score (higher is better) or None when the run diverged.

    Returns {"best": config or None, "best_score", "trials": [{"config", "score", "random"}], "seconds"}.
    """
    if not 0 < n_random <= n_trials:
        raise ValueError(f"n_random={n_random!r}: must be in [1, n_trials={n_trials}]")
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_random)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    trials, start = [], time.time()
    for i in range(n_trials):
        trial = study.ask()
        config = spaces.suggest(trial, rule, lr_range)
        try:
            score = objective(config)
        except mur.MurError as e:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            trials.append({"config": config, "score": None, "random": i < n_random, "error": str(e)})
            continue
        if score is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, score)
        trials.append({"config": config, "score": score, "random": i < n_random})
    done = [t for t in trials if t["score"] is not None]  # neither diverged nor failed
    best = max(done, key=lambda t: t["score"]) if done else None
    return {
        "best": best and best["config"],
        "best_score": best and best["score"],
        "trials": trials,
        "seconds": time.time() - start,
    }
