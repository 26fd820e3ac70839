"""`--streaming` training: a Trainer whose training stream resumes exactly where its checkpoint left it.

transformers 5.x resumes a run on an `IterableDataset` by reading the stream again from its start and
dropping every batch already trained on (`skip_first_batches`): at scale, hours of reading and tokenizing
before the first step. [`StreamingTrainer`] instead loads its training batches with torchdata's
`StatefulDataLoader` (through accelerate's `use_stateful_dataloader`), whose `state_dict()` holds the
`datasets` stream's own position (shard, example, the batch being packed). Each checkpoint stores that
position, one file per rank, and a resumed run starts its loader there: the same blocks follow as in an
uninterrupted run, and nothing is read twice.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..common.errors import UserError

STREAM_STATE_FILE = "stream_state_{rank}.pt"
"""The training loader's `state_dict()` of one rank, in each checkpoint of a `--streaming` run."""

# torchdata 0.11 calls a torch function that torch 2.10+ deprecated; the warning says nothing to a user.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


class StreamingTrainer(Trainer):
    """A `Trainer` on a `datasets.IterableDataset` that saves and restores the stream's position.

    The train dataset must be this rank's share of the stream already (`data.streaming_datasets` splits it
    with `split_dataset_by_node`). Evaluation is the Trainer's own.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The loader restores the position itself: the Trainer must not also skip the batches already seen.
        self.args.ignore_data_skip = True
        self._resume_from: str | None = None
        self._train_loader = None

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """`Trainer.train`; a `resume_from_checkpoint` folder also gives the stream's position."""
        self._resume_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        args = self.args
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            # Starting an iterator draws a base seed; from the global generator, that draw would come after
            # the Trainer restored its RNG state on resume, and shift every later dropout mask.
            generator=torch.Generator().manual_seed(args.seed),
        )
        # accelerate's loader (device placement, end-of-data signal for gradient accumulation) over a
        # StatefulDataLoader. num_processes=1: the dataset is this rank's share already, and
        # `accelerator.prepare` would shard it a second time.
        loader = prepare_data_loader(
            loader,
            device=args.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            dispatch_batches=False,
            use_stateful_dataloader=True,
        )
        if self._resume_from is not None:
            loader.load_state_dict(torch.load(self._stream_state_path(self._resume_from), weights_only=True))
        self._train_loader = loader
        return loader

    def _save_checkpoint(self, model, trial) -> None:
        # Before the Trainer's files: its trainer_state.json, written last, marks the checkpoint complete
        # (`checkpoints.checkpoint_problem`), so a complete checkpoint always holds the position.
        # accelerate snapshots the state before fetching ahead, so it is that of the batches trained on.
        folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self._train_loader.state_dict(), folder / STREAM_STATE_FILE.format(rank=self.args.process_index))
        super()._save_checkpoint(model, trial)

    def _stream_state_path(self, checkpoint: str | os.PathLike) -> Path:
        path = Path(checkpoint, STREAM_STATE_FILE.format(rank=self.args.process_index))
        if not path.is_file():
            raise UserError(
                f"{checkpoint} holds no stream position ({path.name}): it was not written by a --streaming run "
                f"with {self.args.world_size} process(es). Resume it as it was run, or pass --overwrite_output_dir."
            )
        return path


__all__ = ["STREAM_STATE_FILE", "StreamingTrainer"]
