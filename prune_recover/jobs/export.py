"""Export: the final model with its card (`final/README.md`) and the run report, written so that neither is ever
seen half-written; then, when asked, an upload of `final/` to the Hugging Face Hub."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_recover.evaluation.card import model_card
from prune_recover.evaluation.report import write_report
from prune_recover.logs import get_logger
from prune_recover.models import model_origin, save_pretrained_atomic

log = get_logger(__name__)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubPushError(RuntimeError):
    """The upload to the Hub failed after the local export was complete."""


def check_push_target(repo_id: str | None) -> None:
    """Refuse, before any work starts, an `export.push_to_hub` that is not `ORG/NAME` or that cannot upload from
    here: the Hub switched off (`HF_HUB_OFFLINE`) or no token. A network failure can only show at upload time."""
    if repo_id is None:
        return
    if not REPO_ID.match(str(repo_id)):
        raise ValueError(f"export.push_to_hub must be a Hub repository id ORG/NAME or null, got '{repo_id}'")
    from huggingface_hub import constants, get_token

    fix = "set export.push_to_hub=null (the local export needs no Hub) and upload final/ later with `hf upload`"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"export.push_to_hub={repo_id} but the Hub is switched off (HF_HUB_OFFLINE=1): unset it or {fix}"
        )
    if get_token() is None:
        raise ValueError(
            f"export.push_to_hub={repo_id} but there is no Hugging Face token: set HF_TOKEN, run `hf auth login`, or "
            f"{fix}"
        )


def export(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    report: dict,
    model_name: str,
    push_to_hub: str | None = None,
    private: bool = True,
) -> Path:
    """Write `<output_dir>/final/` (model, tokenizer, card) and `pruning_report.json`; push `final/` if asked.

    Raises:
        HubPushError: the upload failed (offline, no token, no access); the local files are complete.
    """
    base_model, license = model_origin(model_name)
    card = model_card(report, base_model, license)
    final = save_pretrained_atomic(model, tokenizer, Path(output_dir) / "final", card=str(card))
    write_report(output_dir, report)
    if push_to_hub:
        push(final, push_to_hub, private)
    return final


def push(folder: Path, repo_id: str, private: bool = True) -> None:
    """Upload `folder` to the Hub repository `repo_id` (created if missing)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as error:
        raise HubPushError(
            f"export.push_to_hub={repo_id}: the upload failed ({type(error).__name__}: {error}). The local export "
            f"{folder} is complete; upload it later with: hf upload {repo_id} {folder}"
        ) from error
    log.info("Uploaded %s to https://huggingface.co/%s", folder, repo_id)
