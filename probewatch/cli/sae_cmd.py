"""`probewatch sae train|eval|info|list|interpret|features|probe`: sparse autoencoders end to end.

Heavy imports (torch, transformers, the training stack) happen inside the handlers so that
`probewatch --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from probewatch.arguments import add_data_dir_arg, add_json_arg, add_model_arg, print_json
from probewatch.behaviours import BEHAVIOURS


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; use 1 on a machine shared with other jobs)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sae", help="sparse autoencoders: train, evaluate, interpret features, fit feature probes")
    ssub = parser.add_subparsers(dest="sae_command", metavar="ACTION", required=True)

    tr = ssub.add_parser(
        "train",
        help="train an SAE on one layer's residual stream (resumable)",
        description="Streams text (shared datasets + model generations) through the model, caches the "
        "layer's activations once, trains with checkpoints, exports cfg.json + "
        "sae_weights.safetensors (SAELens format), reports FVE / L0 / dead %% / CE increase "
        "and writes features.json.",
    )
    add_model_arg(tr)
    tr.add_argument("--layer", type=int, required=True, help="decoder layer whose output (resid_post) the SAE reads")
    tr.add_argument("--d-sae", type=int, required=True, help="number of latents")
    tr.add_argument(
        "--arch", default="topk", choices=["topk", "jumprelu", "relu"], help="architecture (relu = ReLU + L1)"
    )
    tr.add_argument("--k", type=int, default=32, help="topk: active latents per token")
    tr.add_argument(
        "--l1-coefficient",
        type=float,
        default=None,
        help="relu: L1 penalty (normalised units; default 1; larger = sparser)",
    )
    tr.add_argument(
        "--l0-coefficient", type=float, default=None, help="jumprelu: L0 penalty (default 0.5; larger = sparser)"
    )
    tr.add_argument("--epochs", type=int, default=10)
    tr.add_argument("--batch-size", type=int, default=1024)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    tr.add_argument("--out", type=Path, default=None, help="SAE folder (default: $PROBEWATCH_HOME/saes/<model>/<name>)")
    tr.add_argument(
        "--cache-dir", type=Path, default=None, help="activation cache folder (default: under $PROBEWATCH_HOME/cache)"
    )
    tr.add_argument(
        "--statement-tokens", type=int, default=None, help="corpus: distinct statement tokens (default 110k)"
    )
    tr.add_argument(
        "--chat-tokens", type=int, default=None, help="corpus: distinct chat-template tokens (default 130k)"
    )
    tr.add_argument("--generate", type=int, default=None, help="corpus: prompts the model answers (default 256)")
    tr.add_argument(
        "--weights-dtype",
        default="float16",
        choices=["float16", "float32"],
        help="storage dtype of sae_weights.safetensors (loaded as float32 either way)",
    )
    tr.add_argument("--restart", action="store_true", help="discard an existing checkpoint in --out")
    tr.add_argument("--no-interpret", action="store_true", help="skip features.json")
    tr.add_argument("--keep-checkpoint", action="store_true", help="keep <out>/checkpoint after a finished run")
    add_data_dir_arg(tr)
    _add_threads(tr)
    add_json_arg(tr)
    tr.set_defaults(func=_train)

    ev = ssub.add_parser("eval", help="recompute an SAE's figures (FVE, L0, dead %%, CE increase) on its held-out data")
    ev.add_argument("sae", help="SAE folder or name")
    add_model_arg(ev)
    add_data_dir_arg(ev)
    _add_threads(ev)
    add_json_arg(ev)
    ev.set_defaults(func=_eval)

    info = ssub.add_parser("info", help="an SAE's config and figures (no model needed)")
    info.add_argument("sae", help="SAE folder or name")
    add_json_arg(info)
    info.set_defaults(func=_info)

    lst = ssub.add_parser("list", help="shipped and user SAEs")
    lst.add_argument("--model", default=None, help="only SAEs for this model id")
    add_json_arg(lst)
    lst.set_defaults(func=_list)

    it = ssub.add_parser(
        "interpret", help="write features.json: top-activating contexts per latent + behaviour association"
    )
    it.add_argument("sae", help="SAE folder or name")
    add_model_arg(it)
    it.add_argument("--examples", type=int, default=4, help="contexts kept per latent")
    it.add_argument("--behaviours", nargs="*", default=list(BEHAVIOURS), choices=BEHAVIOURS)
    add_data_dir_arg(it)
    _add_threads(it)
    it.set_defaults(func=_interpret)

    ft = ssub.add_parser("features", help="latents most associated with a behaviour, with their top contexts")
    ft.add_argument("--sae", default=None, help="SAE folder or name (default: the model's shipped SAE)")
    ft.add_argument("--model", default="smollm2-135m-instruct", help="model id whose SAEs to look in")
    ft.add_argument(
        "--behaviour", nargs="*", default=None, choices=BEHAVIOURS, help="default: every behaviour in features.json"
    )
    ft.add_argument("--top", type=int, default=10)
    ft.add_argument("--examples", type=int, default=2, help="contexts shown per latent")
    ft.add_argument(
        "--feature", type=int, nargs="*", default=None, help="show these latents instead of a behaviour ranking"
    )
    add_json_arg(ft)
    ft.set_defaults(func=_features)

    pr = ssub.add_parser(
        "probe", help="fit an sae_feature probe (sparse L1 logistic regression or named features) and export a bundle"
    )
    pr.add_argument("--sae", default=None, help="SAE folder or name (default: the model's shipped SAE)")
    add_model_arg(pr)
    pr.add_argument("--behaviour", required=True, choices=BEHAVIOURS)
    pr.add_argument(
        "--method",
        default="l1",
        choices=["l1", "named"],
        help="l1: sparse logistic regression over all latents; named: a few chosen latents with fitted weights",
    )
    pr.add_argument(
        "--features",
        type=int,
        nargs="*",
        default=None,
        help="named: latent ids (default: the top --n-features by AUROC on the training split)",
    )
    pr.add_argument("--n-features", type=int, default=8, help="named: how many latents when --features is not given")
    pr.add_argument(
        "--max-features",
        type=int,
        default=512,
        help="l1: the penalty may keep at most this many latents (C is chosen by grouped CV below this cap)",
    )
    pr.add_argument("--aggregation", default=None, help="aggregation (default: chosen on the validation split)")
    pr.add_argument(
        "--token-selection",
        choices=("response", "prompt_last", "answer"),
        default=None,
        help="tokens the probe reads (default: the behaviour's): answer = the option a multiple-choice reply names",
    )
    pr.add_argument("--fpr", type=float, default=0.01, help="threshold: false-positive rate on the control set")
    pr.add_argument("--id", dest="probe_id", default=None, help="probe id (default: sae-<behaviour>-<method>)")
    pr.add_argument(
        "--out", type=Path, default=None, help="bundle folder (default: $PROBEWATCH_HOME/bundles/<model>/<id>)"
    )
    pr.add_argument(
        "--embed-sae", action="store_true", help="copy the SAE into the bundle (self-contained for deployment)"
    )
    add_data_dir_arg(pr)
    _add_threads(pr)
    add_json_arg(pr)
    pr.set_defaults(func=_probe)


# -- helpers -------------------------------------------------------------------------------------------
def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _user_saes():
    from probewatch import envs

    return envs.home() / "saes"


def _resolve(spec: str | None, model_id: str | None) -> Path:
    from probewatch.probes.saes.index import resolve_sae

    return resolve_sae(spec, model_id, _user_saes())


def _data_dir(args: argparse.Namespace) -> Path:
    from probewatch.training.datasets.common import resolve_data_dir

    return resolve_data_dir(args.data_dir)


def _print_figures(figures: dict) -> None:
    rows = [
        ("FVE (held-out)", f"{figures['fve']:.4f}"),
        ("normalised MSE", f"{figures['nmse']:.4f}"),
        ("L0", f"{figures['l0']:.2f}"),
        ("dead latents", f"{100 * figures['dead_fraction']:.2f}%"),
    ]
    if "ce_increase" in figures:
        rows += [
            ("CE clean", f"{figures['ce_clean']:.4f}"),
            ("CE spliced", f"{figures['ce_spliced']:.4f}"),
            ("CE increase", f"{figures['ce_increase']:+.4f} nats/token"),
            ("loss recovered", f"{100 * figures['loss_recovered']:.2f}%"),
        ]
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SAE figures", show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    Console(stderr=True).print(table)


# -- handlers ------------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    import torch

    from probewatch.models import load_model
    from probewatch.probes.saes import load_sae
    from probewatch.training.sae.corpus import CorpusConfig
    from probewatch.training.sae.pipeline import (
        default_out_dir,
        drop_checkpoint,
        interpret_and_save,
        prepare_activations,
        sae_name,
        train_and_export,
    )
    from probewatch.training.sae.trainer import SAETrainSettings

    _threads(args)
    settings = SAETrainSettings(
        architecture=args.arch,
        d_sae=args.d_sae,
        k=args.k,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every,
        **({"l1_coefficient": args.l1_coefficient} if args.l1_coefficient is not None else {}),
        **({"l0_coefficient": args.l0_coefficient} if args.l0_coefficient is not None else {}),
    )
    corpus = CorpusConfig(
        seed=args.seed,
        **{
            k: v
            for k, v in (
                ("statement_tokens", args.statement_tokens),
                ("chat_tokens", args.chat_tokens),
                ("generate_prompts", args.generate),
            )
            if v is not None
        },
    )
    data_dir = _data_dir(args)
    loaded = load_model(args.model)
    out = args.out or default_out_dir(loaded.model_id, sae_name(settings, args.layer))
    report = train_and_export(
        loaded,
        args.layer,
        settings,
        out,
        corpus,
        data_dir,
        cache_dir=args.cache_dir,
        weights_dtype=torch.float16 if args.weights_dtype == "float16" else None,
        restart=args.restart,
        command="probewatch " + " ".join(sys.argv[1:]),
    )
    if not args.no_interpret:
        store = prepare_activations(loaded, args.layer, corpus, data_dir, args.cache_dir, progress=False)
        interpret_and_save(loaded, load_sae(out), out, store, data_dir)
    if not args.keep_checkpoint:
        drop_checkpoint(out)
    print(f"SAE written to {out}", file=sys.stderr)
    _print_figures(report["figures"])
    if args.json:
        print_json({"path": str(out), **report["figures"]})
    else:
        print(out)
    return 0


def _model_and_sae(args: argparse.Namespace):
    """Threads set, the model loaded, and the SAE named by `args.sae` loaded for it (d_model and
    fingerprint checked): the start of every command that reads an existing SAE."""
    from probewatch.models import load_model
    from probewatch.probes.saes import load_sae

    _threads(args)
    loaded = load_model(args.model)
    path = _resolve(args.sae, loaded.model_id)
    return loaded, path, load_sae(path, expected_d_model=loaded.d_model, expected_fingerprint=loaded.fingerprint)


def _eval(args: argparse.Namespace) -> int:
    from probewatch.training.sae.pipeline import evaluate_sae, store_for_sae

    loaded, path, sae = _model_and_sae(args)
    store = store_for_sae(loaded, path, _data_dir(args))
    figures = evaluate_sae(sae, store, loaded.model)["figures"]
    _print_figures(figures)
    if args.json:
        print_json({"path": str(path), **figures})
    return 0


def _info(args: argparse.Namespace) -> int:
    from probewatch.probes.saes import TRAINING_REPORT_FILENAME, load_sae, read_sae_cfg_dict

    path = _resolve(args.sae, None)
    sae = load_sae(path)  # verifies the files
    report_path = path / TRAINING_REPORT_FILENAME
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    out = {
        "path": str(path),
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "layer": sae.cfg.layer,
        "hook_name": sae.cfg.hook_name,
        "model": sae.cfg.model_name,
        "cfg": read_sae_cfg_dict(path),
        "figures": report.get("figures"),
        "command": report.get("command"),
    }
    if args.json:
        print_json(out)
        return 0
    print(json.dumps({k: v for k, v in out.items() if k != "cfg"}, indent=2))
    return 0


def _list(args: argparse.Namespace) -> int:
    from probewatch.probes.saes import read_sae_cfg_dict
    from probewatch.probes.saes.index import discover_saes

    rows = []
    for s in discover_saes(_user_saes(), args.model):
        cfg = read_sae_cfg_dict(s.path)
        rows.append(
            {
                "name": s.name,
                "model": s.model_id,
                "architecture": cfg.get("architecture"),
                "d_sae": cfg.get("d_sae"),
                "hook_name": (cfg.get("metadata") or {}).get("hook_name"),
                "source": s.source,
                "path": str(s.path),
            }
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no SAEs found (shipped or under $PROBEWATCH_HOME/saes)")
    for r in rows:
        print(
            f"{r['name']:28} {r['model']:24} {r['architecture']:9} d_sae={r['d_sae']:<6} {r['hook_name']}  [{r['source']}] {r['path']}"
        )
    return 0


def _interpret(args: argparse.Namespace) -> int:
    from probewatch.training.sae.pipeline import interpret_and_save, store_for_sae

    loaded, path, sae = _model_and_sae(args)
    data_dir = _data_dir(args)
    store = store_for_sae(loaded, path, data_dir)
    out = interpret_and_save(loaded, sae, path, store, data_dir, tuple(args.behaviours), n_examples=args.examples)
    print(out)
    return 0


def _features(args: argparse.Namespace) -> int:
    from probewatch.training.sae.interpret import load_features_json

    path = _resolve(args.sae, args.model)
    doc = load_features_json(path)
    by_id = {f["id"]: f for f in doc["features"]}
    sections: list[dict[str, Any]] = []
    if args.feature:
        sections.append({"behaviour": None, "latents": [{"id": i} for i in args.feature]})
    else:
        wanted = args.behaviour or list(doc.get("behaviours", {}))
        for behaviour in wanted:
            info = doc.get("behaviours", {}).get(behaviour)
            if info is None:
                from probewatch.errors import ProbewatchError

                raise ProbewatchError(
                    f"{path}/features.json has no association table for {behaviour!r}; rerun `probewatch sae interpret`"
                )
            sections.append(
                {
                    "behaviour": behaviour,
                    "dataset": info["dataset"],
                    "pooling": info["pooling"],
                    "latents": info["top"][: args.top],
                }
            )
    for section in sections:
        for entry in section["latents"]:
            if entry["id"] not in by_id:
                from probewatch.errors import ProbewatchError

                raise ProbewatchError(f"latent {entry['id']} not in {path}/features.json (d_sae={doc['sae']['d_sae']})")
            feature = by_id[entry["id"]]
            entry.update({k: feature[k] for k in ("description", "density", "max_act", "top_tokens")})
            entry["examples"] = feature["examples"][: args.examples]
    if args.json:
        print_json({"sae": str(path), "sections": sections})
        return 0
    _print_feature_sections(path, sections)
    return 0


def _highlight(example: dict) -> str:
    from rich.markup import escape

    peak = max((a for a in example["acts"] if a is not None), default=0.0) or 1.0
    parts = []
    for i, (tok, act) in enumerate(zip(example["tokens"], example["acts"])):
        text = escape(tok.replace("\n", "⏎"))
        if i == example["at"]:
            parts.append(f"[bold white on red]{text}[/]")
        elif act and act > 0.5 * peak:
            parts.append(f"[black on yellow]{text}[/]")
        elif act and act > 0:
            parts.append(f"[yellow]{text}[/]")
        else:
            parts.append(text)
    return "".join(parts)


def _print_feature_sections(path: Path, sections: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for section in sections:
        title = (
            f"{section['behaviour']}: latents of {path.name} ranked by |AUROC - 0.5| ({section['pooling']}; "
            f"{section['dataset']})"
            if section["behaviour"]
            else f"latents of {path.name}"
        )
        table = Table(title=title, show_lines=True)
        for col in ("latent", "AUROC", "mean +/-", "density", "description", "top contexts (red = max token)"):
            table.add_column(col, overflow="fold")
        for e in section["latents"]:
            auroc = f"{e['auroc']:.3f}" if "auroc" in e else "-"
            means = f"{e['mean_pos']:.2f} / {e['mean_neg']:.2f}" if "mean_pos" in e else "-"
            contexts = "\n".join(f"{x['act']:.1f}: {_highlight(x)}" for x in e["examples"])
            table.add_row(str(e["id"]), auroc, means, f"{100 * e['density']:.3f}%", e["description"], contexts)
        console.print(table)


def _probe(args: argparse.Namespace) -> int:
    from probewatch.models import load_model
    from probewatch.training.sae.probe import fit_and_export_sae_probe

    _threads(args)
    loaded = load_model(args.model)
    path = _resolve(args.sae, loaded.model_id)
    result = fit_and_export_sae_probe(
        loaded,
        path,
        args.behaviour,
        method=args.method,
        features=args.features,
        n_features=args.n_features,
        max_features=args.max_features,
        aggregation=args.aggregation,
        token_selection=args.token_selection,
        fpr=args.fpr,
        probe_id=args.probe_id,
        out=args.out,
        embed_sae=args.embed_sae,
        data_dir=_data_dir(args),
        command="probewatch " + " ".join(sys.argv[1:]),
    )
    if args.json:
        print_json(result)
    else:
        print(json.dumps(result, indent=2), file=sys.stderr)
        print(result["path"])
    return 0
