"""`mp4sr serve` / `mp4sr export --device`: a GPU that is not there is refused before the model loads."""

from __future__ import annotations

import pytest
import torch

from mp4sr.errors import ConfigError
from mp4sr.serve.commands import export_command, serve_command


@pytest.mark.parametrize("command", [serve_command, lambda path, device: export_command(path, "x.csv", device=device)],
                         ids=["serve", "export"])
def test_a_missing_gpu_is_refused_before_loading(command, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--device='cuda' but torch .* finds no CUDA GPU: use --device=cpu"):
        command(tmp_path / "no-such-run", device="cuda")
