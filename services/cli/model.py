"""`audioguard model register|list|show|alias|promote|rollback|compare|gate`: the model registry by hand.

Argument parsing and tables only; the work is in services.registry. The registry is
--registry URI, else `registry.uri` from the settings (AUDIOGUARD_REGISTRY__URI), else the
embedded file registry under the data directory. Every alias move records who
($AUDIOGUARD_ACTOR, else the login name), when, from which version to which, and --reason.

Exit codes: 0 done; 1 refused (unknown model, version or alias; a tampered artifact; the
registry unreachable). This module must never import mlflow or torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.registry import AliasEvent, ModelRegistry, ModelVersion


def add_parser(subparsers: Any) -> None:
    model = subparsers.add_parser(
        "model",
        help="the model registry: register versions, move the champion / challenger aliases, audit",
        description=(
            "Model versions (weights + manifest + model card, their sha256, the training manifest hash, "
            "evaluation results) and aliases (champion, challenger). A worker configured with "
            "model_path = models:/<name>@champion follows the alias without a restart (docs/models.md)."
        ),
    )
    model.add_argument(
        "--registry",
        metavar="URI",
        help="a directory / file:// URI (the file registry) or http(s)://host:port (an MLflow tracking "
        "server); default: registry.uri from the settings, else the data directory's file registry",
    )
    commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    register = commands.add_parser(
        "register",
        help="add an artifact directory as the next version of a model",
        description="Verifies the artifact (weights against its manifest's sha256), copies weights.pt, "
        "manifest.json and the model card into the registry as a new version. Moves no alias "
        "unless --alias is given.",
    )
    register.add_argument("artifact", type=Path, help="directory with weights.pt and manifest.json")
    register.add_argument("--name", required=True, help="registered model name, e.g. audioguard-lfb-cnn")
    register.add_argument(
        "--card", type=Path, help="model card (default: the artifact's model-card.md, if any)"
    )
    register.add_argument(
        "--eval",
        type=Path,
        dest="eval_file",
        help="evaluation results, JSON (default: the manifest's dev_metrics)",
    )
    register.add_argument("--description", default="", help="one line about this version")
    register.add_argument("--alias", help="also point this alias (e.g. challenger) at the new version")
    register.add_argument("--reason", default="registered", help="audit reason for --alias")
    register.set_defaults(handler=_register)

    listing = commands.add_parser("list", help="models, or the versions of one model, as a table")
    listing.add_argument("name", nargs="?", help="a model name: list its versions")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(handler=_list)

    show = commands.add_parser(
        "show", help="one version (NAME VERSION or NAME@ALIAS) and the alias audit trail"
    )
    show.add_argument("ref", help="NAME@ALIAS, or NAME")
    show.add_argument("version", nargs="?", type=int, help="version number (with NAME)")
    show.add_argument("--json", action="store_true", help="JSON instead of tables")
    show.set_defaults(handler=_show)

    alias = commands.add_parser("alias", help="point an alias at a version (or --delete it)")
    alias.add_argument("name")
    alias.add_argument("alias", help="e.g. challenger")
    alias.add_argument("version", nargs="?", type=int, help="version number (not with --delete)")
    alias.add_argument("--delete", action="store_true", help="remove the alias")
    alias.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    alias.set_defaults(handler=_alias)

    promote = commands.add_parser(
        "promote",
        help="make a version (default: the challenger) the champion",
        description="Points champion at VERSION (default: the challenger's version) and removes the "
        "challenger alias if it pointed there. Workers serving models:/NAME@champion swap to it "
        "within registry.poll_seconds. runbooks/model-promotion.md",
    )
    promote.add_argument("name")
    promote.add_argument("version", nargs="?", type=int)
    promote.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    promote.add_argument(
        "--override",
        action="store_true",
        help="promote without a passing gate result (the audit record says so, with --reason)",
    )
    promote.set_defaults(handler=_promote)

    gate = commands.add_parser(
        "gate",
        help="ship / no-ship: score a candidate and the champion on the named evaluation sets",
        description="Scores CANDIDATE and the champion on the demo clips (by generator family and language), "
        "the not-speech set (must be inconclusive), a small partial-spoof set and, when data/detector/test "
        "exists, the test split (by generator, language, channel, codec, duration). Per slice: the error "
        "rate of each and a paired bootstrap 95%% interval of the difference (fixed --seed). Refuses "
        "(exit 1) when a slice's candidate error rate exceeds the champion's by more than --margin "
        "and the interval's lower end does too. Writes the result into the candidate's eval results "
        "(`gate`), which `model promote` requires. docs/models.md",
    )
    gate.add_argument("candidate", help="models:/NAME/VERSION or models:/NAME@ALIAS (e.g. @challenger)")
    gate.add_argument(
        "--champion", help="the reference (default: models:/NAME@champion of the candidate's NAME)"
    )
    gate.add_argument("--margin", type=float, default=0.02, help="tolerated error-rate increase (0.02)")
    gate.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    gate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (1000)")
    gate.add_argument(
        "--partial-pairs", type=int, default=4, help="partial-spoof pairs to build (4; 0: leave the set out)"
    )
    gate.add_argument(
        "--data",
        type=Path,
        default=Path("data/detector"),
        help="the data build whose test split joins the sets when its manifest.csv exists (data/detector)",
    )
    gate.add_argument(
        "--set",
        action="append",
        dest="sets",
        default=[],
        metavar="NAME=DIR",
        help="one more named set, e.g. a tenant's long tail: DIR/labels.csv (file,label[,slice columns]) "
        "and its audio; sliced NAME/all and NAME/<column>=<value> (repeatable; docs/models.md)",
    )
    for who in ("candidate", "champion"):
        gate.add_argument(
            f"--{who}-runtime",
            choices=("auto", "torch", "onnx"),
            default="auto",
            help=f"how the {who} is scored (auto: onnx when its artifact carries network.onnx, else torch)",
        )
    gate.add_argument("--json", action="store_true", help="the result as JSON instead of a table")
    gate.set_defaults(handler=_gate)

    rollback = commands.add_parser(
        "rollback",
        help="point champion back at the version it had before its last move",
        description="Reads the audit trail for the champion's previous version (or --to VERSION) and "
        "points champion there. runbooks/model-rollback.md",
    )
    rollback.add_argument("name")
    rollback.add_argument("--to", type=int, help="this version instead of the previous champion")
    rollback.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    rollback.set_defaults(handler=_rollback)

    compare = commands.add_parser(
        "compare",
        help="champion vs challenger over the shadow records: agreement, label flips, shift, cost",
        description="Reads the shadow_scores table (workers with shadow.model set write it) and prints, per "
        "tenant and for all tenants (*): agreement rate, the label-flip matrix, mean scores, the two-sample "
        "Kolmogorov-Smirnov statistic of the score distributions against its critical value at --alpha "
        "(it falls as samples grow: sqrt((n+m)/(n*m))), and milliseconds per window of each model.",
    )
    compare.add_argument("--database", metavar="URL", help="PostgreSQL URL (default: database.url)")
    compare.add_argument(
        "--tenant", action="append", dest="tenants", metavar="TENANT", help="only these tenants"
    )
    compare.add_argument(
        "--challenger", metavar="VERSION", help="only this challenger version, e.g. 3.0.0+r4"
    )
    compare.add_argument(
        "--alpha", type=float, default=0.01, help="significance of the shift test (default 0.01)"
    )
    compare.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    compare.set_defaults(handler=_compare)

    export_onnx = commands.add_parser(
        "export-onnx",
        help="write an artifact's network as ONNX, for the worker's runtime = \"onnx\"",
        description="Exports the network after the front end (features -> logits) with torch.onnx to "
        "<artifact>/network.onnx (or --out DIR) and records its sha256 and the weights' sha256 in "
        "network.onnx.json; the worker refuses an export made from other weights. The front end "
        '(STFT, LPC residual) stays in torch (docs/models.md, "Runtimes").',
    )
    export_onnx.add_argument(
        "--model", metavar="DIR", type=Path, help="artifact directory (default: the shipped one)"
    )
    export_onnx.add_argument("--out", metavar="DIR", type=Path, help="where to write (default: --model)")
    export_onnx.add_argument(
        "--quantize",
        choices=("int8", "int8-dynamic", "fp16"),
        help="write a reduced-precision variant: a whole artifact in --out (required) to register and "
        "gate; int8 is calibrated on training-split clips of --data, never dev or test",
    )
    export_onnx.add_argument(
        "--data", type=Path, default=Path("data/detector"), help="the data build for int8 calibration"
    )
    export_onnx.add_argument(
        "--calibration-clips", type=int, default=200, help="training clips for int8 calibration (200)"
    )
    export_onnx.set_defaults(handler=_export_onnx)


def _compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from services.errors import AudioguardError
    from services.registry import LABELS, ShadowTable, compare

    url = args.database
    if url is None:
        from services.settings import load_settings

        url = load_settings(getattr(args, "config", None)).database.url
    if not url:
        print("audioguard model compare: no database (set --database or database.url)", file=sys.stderr)
        return 1
    try:
        rows = ShadowTable(url).read(tenants=args.tenants or (), challenger=args.challenger)
    except AudioguardError as error:
        print(f"audioguard model compare: {error}", file=sys.stderr)
        return 1
    results = compare(rows, alpha=args.alpha)
    if args.json:
        for stats in results:
            print(json.dumps(stats.to_json(), sort_keys=True))
        return 0
    console = _console()
    if not results:
        console.print("no shadow records yet")
        return 0
    table = Table(title=f"champion vs challenger over {len(rows)} shadow records (tenant * = all)")
    columns = (
        "tenant",
        "champion",
        "challenger",
        "n",
        "agreement",
        "mean score",
        "KS D / crit",
        "shifted",
        "ms/window",
    )
    for column in columns:
        table.add_column(column)
    for st in results:
        table.add_row(
            st.tenant, st.champion_version, st.challenger_version, str(st.n), f"{st.agreement:.1%}",
            f"{st.mean_champion:.3f} -> {st.mean_challenger:.3f}", f"{st.ks:.3f} / {st.ks_critical:.3f}",
            "yes" if st.shifted else "no",
            f"{st.champion_ms_per_window:.2f} -> {st.challenger_ms_per_window:.2f}",
        )  # fmt: skip
    console.print(table)
    for st in results:
        flips = Table(title=f"labels, tenant {st.tenant}: champion (rows) -> challenger (columns)")
        flips.add_column("champion")
        for label in LABELS:
            flips.add_column(label)
        for a in LABELS:
            flips.add_row(a, *(str(st.flips.get((a, b), 0)) for b in LABELS))
        console.print(flips)
    return 0


def _open(args: argparse.Namespace) -> ModelRegistry:
    from services.registry import open_registry

    uri = args.registry
    if uri is None:
        from services.settings import load_settings

        settings = load_settings(getattr(args, "config", None))
        return open_registry(settings.registry.uri, cache_dir=settings.registry.cache_dir)
    return open_registry(uri)


def _run(args: argparse.Namespace, work: Any) -> int:
    from services.errors import AudioguardError

    try:
        work(_open(args))
    except AudioguardError as error:
        print(f"audioguard model: {error}", file=sys.stderr)
        return 1
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from services.detector import default_artifact_dir
    from services.detector.training.onnx_export import export_onnx
    from services.errors import AudioguardError

    artifact = args.model or default_artifact_dir()
    try:
        if args.quantize is None:
            path = export_onnx(artifact, args.out)
        else:
            from services.detector.training.onnx_variants import calibration_windows, export_variant

            if args.out is None or args.out.resolve() == artifact.resolve():
                print("audioguard model: --quantize needs --out DIR (a new artifact folder)", file=sys.stderr)
                return 2
            windows, source = None, None
            if args.quantize == "int8":
                windows, manifest_sha256 = calibration_windows(args.data, artifact, args.calibration_clips)
                source = {
                    "split": "train",
                    "clips": args.calibration_clips,
                    "manifest_sha256": manifest_sha256,
                }
            path = export_variant(artifact, args.out, args.quantize, windows, source)
    except AudioguardError as error:
        print(f"audioguard model: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size} bytes) and {path.with_suffix('.onnx.json').name}")
    return 0


def _console() -> Any:
    from rich.console import Console

    return Console()


def _event_line(event: AliasEvent) -> str:
    moved = f"{event.previous if event.previous is not None else '-'} -> {event.version or '-'}"
    return f"{event.name}@{event.alias}: {moved} ({event.action} by {event.actor}: {event.reason})"


def _register(args: argparse.Namespace) -> int:
    def work(registry: ModelRegistry) -> None:
        results = json.loads(args.eval_file.read_text()) if args.eval_file else None
        version = registry.register(
            args.name, args.artifact, eval_results=results, card=args.card, description=args.description
        )
        print(
            f"registered {version.name} version {version.version} (sha256 {version.sha256}) in {registry.uri}"
        )
        if args.alias:
            print(_event_line(registry.set_alias(args.name, args.alias, version.version, reason=args.reason)))

    return _run(args, work)


def _version_json(version: ModelVersion) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": version.version,
        "aliases": list(version.aliases),
        "sha256": version.sha256,
        "manifest_version": version.manifest_version,
        "serving_version": version.serving_version,
        "train_manifest_sha256": version.train_manifest_sha256,
        "eval_results": version.eval_results,
        "created_at": version.created_at.isoformat(),
        "created_by": version.created_by,
        "description": version.description,
        "has_card": version.has_card,
        "source": version.source,
    }


def _eer(version: ModelVersion) -> str:
    value = version.eval_results.get("eer")
    return f"{float(value):.4f}" if isinstance(value, int | float) else "-"


def _list(args: argparse.Namespace) -> int:
    from rich.table import Table

    def work(registry: ModelRegistry) -> None:
        if args.name is None:
            rows = [(name, registry.aliases(name), len(registry.versions(name))) for name in registry.names()]
            if args.json:
                for name, aliases, count in rows:
                    print(json.dumps({"name": name, "aliases": aliases, "versions": count}))
                return
            table = Table(title=f"models in {registry.uri}")
            for column in ("name", "versions", "champion", "challenger", "other aliases"):
                table.add_column(column)
            for name, aliases, count in rows:
                others = ", ".join(
                    f"{a}={v}" for a, v in sorted(aliases.items()) if a not in ("champion", "challenger")
                )
                table.add_row(
                    name,
                    str(count),
                    str(aliases.get("champion", "-")),
                    str(aliases.get("challenger", "-")),
                    others,
                )
            _console().print(table)
            return
        versions = registry.versions(args.name)
        if args.json:
            for version in versions:
                print(json.dumps(_version_json(version)))
            return
        table = Table(title=f"{args.name} in {registry.uri}")
        for column in ("version", "aliases", "artifact version", "sha256", "dev EER", "created", "by"):
            table.add_column(column)
        for version in versions:
            table.add_row(
                str(version.version),
                ", ".join(version.aliases) or "-",
                version.manifest_version,
                version.sha256[:12],
                _eer(version),
                version.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                version.created_by,
            )
        _console().print(table)

    return _run(args, work)


def _show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from services.registry import ModelRef

    def work(registry: ModelRegistry) -> None:
        name, _, alias = args.ref.partition("@")
        if alias:
            version = registry.resolve(ModelRef(name, alias=alias))
        elif args.version is not None:
            version = registry.get(name, args.version)
        else:
            champion = registry.aliases(name).get("champion")
            versions = registry.versions(name)
            if not versions:
                from services.errors import FatalError

                raise FatalError("model_not_found", f"model {name} has no versions in {registry.uri}")
            version = registry.get(name, champion) if champion is not None else versions[-1]
        history = [e for e in registry.history(name)]
        if args.json:
            print(json.dumps({**_version_json(version), "audit": [e.to_json() for e in history]}, indent=2))
            return
        details = Table(title=f"{version.name} version {version.version}", show_header=False)
        details.add_column("field")
        details.add_column("value", overflow="fold")
        for key, value in _version_json(version).items():
            text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
            details.add_row(key, text)
        console = _console()
        console.print(details)
        audit = Table(title=f"alias moves of {name} (audit)")
        for column in ("when", "who", "action", "alias", "from", "to", "reason"):
            audit.add_column(column)
        for e in history:
            audit.add_row(
                e.at.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                e.alias,
                "-" if e.previous is None else str(e.previous),
                "-" if e.version is None else str(e.version),
                e.reason,
            )
        console.print(audit)

    return _run(args, work)


def _alias(args: argparse.Namespace) -> int:
    def work(registry: ModelRegistry) -> None:
        if args.delete:
            print(_event_line(registry.delete_alias(args.name, args.alias, reason=args.reason)))
            return
        if args.version is None:
            from services.errors import FatalError

            raise FatalError("bad_config", "name the version the alias should point at (or --delete)")
        print(_event_line(registry.set_alias(args.name, args.alias, args.version, reason=args.reason)))

    return _run(args, work)


def _promote(args: argparse.Namespace) -> int:
    from services.registry import promote

    return _run(
        args,
        lambda registry: print(
            _event_line(
                promote(registry, args.name, args.version, reason=args.reason, override=args.override)
            )
        ),
    )


def _gate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from services.errors import AudioguardError, FatalError
    from services.registry import ModelRef, parse_model_uri

    try:
        registry = _open(args)
        ref = parse_model_uri(args.candidate)
        if ref is None:
            raise FatalError("bad_config", f"candidate {args.candidate!r}: expected models:/NAME/VERSION")
        champion_ref = (
            parse_model_uri(args.champion) if args.champion else ModelRef(ref.name, alias="champion")
        )
        if champion_ref is None:
            raise FatalError("bad_config", f"champion {args.champion!r}: expected models:/NAME@ALIAS")
        candidate = registry.resolve(ref)
        champion = registry.resolve(champion_ref)
        from services.detector.training.gate import evaluation_items, run_gate

        console = _console()
        extra = {}
        for spec in args.sets:
            name, sep, directory = spec.partition("=")
            if not sep or not directory:
                raise FatalError("bad_config", f"--set {spec!r}: expected NAME=DIR")
            extra[name] = Path(directory)
        items = evaluation_items(partial_pairs=args.partial_pairs, data=args.data, extra=extra)
        result = run_gate(
            registry.fetch(candidate.name, candidate.version),
            registry.fetch(champion.name, champion.version),
            margin=args.margin,
            seed=args.seed,
            bootstrap=args.bootstrap,
            items=items,
            progress=None if args.json else console.log,
            candidate_runtime=args.candidate_runtime,
            champion_runtime=args.champion_runtime,
        )
        record = {
            **result.to_json(),
            "champion": f"models:/{champion.name}/{champion.version}",
            "champion_sha256": champion.sha256,
        }
        from datetime import UTC, datetime

        from services.registry import actor

        record.update({"at": datetime.now(UTC).isoformat(), "by": actor()})
        registry.record_eval(candidate.name, candidate.version, "gate", record)
        registry.record_eval(candidate.name, candidate.version, "drift_reference", result.candidate_drift)
    except AudioguardError as error:
        print(f"audioguard model gate: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(record, sort_keys=True))
        return 0 if result.passed else 1
    title = (
        f"gate: {candidate.name} v{candidate.version} ({result.runtimes['candidate']}) vs champion "
        f"v{champion.version} ({result.runtimes['champion']}) "
        f"(error rate, margin {args.margin}, 95% paired bootstrap, seed {args.seed})"
    )
    table = Table(title=title)
    for column in ("slice", "n", "candidate", "champion", "delta", "95% CI of delta", "verdict"):
        table.add_column(column)
    for s in result.slices:
        table.add_row(
            s.slice, str(s.n), f"{s.candidate:.3f}", f"{s.champion:.3f}", f"{s.delta:+.3f}",
            f"[{s.ci_low:+.3f}, {s.ci_high:+.3f}]", "[red]REGRESSED[/red]" if s.regressed else "ok",
        )  # fmt: skip
    console.print(table)
    if result.passed:
        console.print(f"PASS: {candidate.name} version {candidate.version} may be promoted (recorded)")
        return 0
    for s in result.regressed:
        console.print(
            f"REFUSED: slice {s.slice} regressed by {s.delta:+.3f} error rate "
            f"({s.champion:.3f} -> {s.candidate:.3f}, 95% CI [{s.ci_low:+.3f}, {s.ci_high:+.3f}])"
        )
    return 1


def _rollback(args: argparse.Namespace) -> int:
    from services.registry import rollback

    return _run(
        args, lambda registry: print(_event_line(rollback(registry, args.name, args.to, reason=args.reason)))
    )
