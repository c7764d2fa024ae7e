"""State dicts written by an earlier release load and continue bit-identically (fixtures in tests/fixtures)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import classification_batches, mlp
from probprec._checkpoint import FORMAT_0_BEHAVIOUR

FIXTURES = Path(__file__).parent / "fixtures" / "state_dicts"
sys.path.insert(0, str(FIXTURES))

from write_fixtures import CONFIGS, SAVE_AT, STEPS, train  # noqa: E402

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")


@pytest.mark.parametrize("phase", list(SAVE_AT))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_format_0_state_dict_continues_bit_identically(name, phase):
    saved = torch.load(FIXTURES / f"{name}_{phase}.pt", weights_only=True)
    model = mlp()
    model.load_state_dict(saved["model"])
    opt = CONFIGS[name](model)
    if opt.config.mode == "default":  # format 0 knew no safeguard: with it on, the state dict is refused
        with pytest.raises(ValueError, match="safeguard=False"):
            opt.load_state_dict(saved["optimizer"])
        opt = CONFIGS[name](model, **FORMAT_0_BEHAVIOUR)  # the behaviour that wrote it
    opt.load_state_dict(saved["optimizer"])
    assert opt.phase == saved["phase"]
    train(model, opt, classification_batches(STEPS, seed=2), saved["step"], STEPS)
    for p, want in zip(model.parameters(), saved["final_params"], strict=True):
        assert torch.equal(p.detach(), want)
    log, want = opt.get_log(), saved["final_log"]
    for key in ("phase", "cycle", "cycles_completed", "step_sizes", "learning_rates", "eigenvalues",
                "preconditioned", "prior_mean", "prior_width", "noise", "hvp_count"):
        assert log[key] == want[key], key
