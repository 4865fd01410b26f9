"""``iotlink decode`` and ``iotlink specs check``: decoder specs from the command line.

``decode`` runs one payload through exactly the code the job uses (envelope size limit, spec
decoder, data contract) and prints each standard record as one JSON line. Exit codes: 0 all
decoded, 1 a payload or row was rejected (one line per rejection on stderr), 2 invalid spec or
registry (``file:line: field: reason`` on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

from jobs.config import Settings

EXIT_OK, EXIT_REJECTED, EXIT_BAD_SPEC = 0, 1, 2


def add_spec_commands(sub) -> None:
    """Adds ``decode`` and ``specs`` to the ``iotlink`` sub-command parsers."""
    decode = sub.add_parser(
        "decode",
        help="decode one payload with a spec and print the standard records as JSON lines",
        description="Decode one payload with a YAML decoder spec, as the telemetry job would. Prints each record as one "
        "JSON line on stdout and exits 0; a rejected payload (or CSV row) prints its reason on stderr and exits 1; "
        "an invalid spec exits 2 with file, line, field and reason.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  iotlink decode --spec yaml_specs/product_a.yaml --hex 00FD3C\n"
        "  iotlink decode --spec yaml_specs/product_d.yaml --csv 'temp,hum\\n25.5,60'\n"
        "  iotlink decode --spec yaml_specs/fire_sensor_json.yaml --json '{\"deviceId\": \"f1\", \"status\": 0, \"volt\": 221}'\n"
        "  iotlink decode --spec yaml_specs/fire_sensor_bin.yaml --file frame.bin --device-id fire-0001",
    )
    decode.add_argument("--spec", required=True, metavar="PATH", help="the decoder spec (YAML file)")
    payload = decode.add_mutually_exclusive_group(required=True)
    payload.add_argument(
        "--hex", metavar="HEX", help="binary payload as hex text: 00FD3C, 0x00FD3C, '00 FD 3C', '0x00 0xFD 0x3C', 00:FD:3C or 00-FD-3C, any case"
    )
    payload.add_argument("--json", metavar="TEXT", help="JSON payload text")
    payload.add_argument("--csv", metavar="TEXT", help="CSV payload text; a literal \\n separates lines when the text has no newline")
    payload.add_argument("--file", metavar="PATH", help="read the payload bytes from a file ('-' for stdin), byte-exact")
    decode.add_argument("--device-id", default="cli-device", metavar="ID", help="device id of the sender (default cli-device)")
    decode.add_argument("--product-id", metavar="ID", help="product id (default: the spec's product_type)")
    decode.add_argument("--tenant", metavar="ID", help="tenant of the device, for ${device.tenant}")
    decode.add_argument("--received-at", type=int, metavar="MS", help="receive time, epoch ms (default now)")
    decode.add_argument("--device-registry", metavar="FILE|URL", help="device registry (YAML file or postgresql:// URL) for product/tenant")

    specs = sub.add_parser(
        "specs",
        help="validate decoder specs and run their examples",
        description="Validate decoder specs and run the examples in each. Exits 0 when every spec is valid and every "
        "example passes, 1 when an example fails, 2 when a spec is invalid.",
    )
    specs_sub = specs.add_subparsers(dest="specs_command", required=True, metavar="ACTION")
    check = specs_sub.add_parser("check", help="validate specs and run their examples", description="Validate specs and run their examples.")
    check.add_argument("paths", nargs="*", metavar="PATH", help="spec files or directories (default: the configured specs dir)")
    check.add_argument("--quiet", "-q", action="store_true", help="print only problems and the summary")


def run_spec_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatches ``decode`` and ``specs check``."""
    if args.command == "decode":
        return cmd_decode(args, settings)
    return cmd_specs_check(args, settings)


def _payload_from_args(args: argparse.Namespace, spec) -> bytes:
    from operators.spec_decoder import decode_hex_text

    if args.hex is not None:
        if getattr(spec, "input", None) == "hex":
            return args.hex.encode("ascii", errors="replace")
        return decode_hex_text(args.hex)
    if args.json is not None:
        return args.json.encode("utf-8")
    if args.csv is not None:
        text = args.csv if "\n" in args.csv else args.csv.replace("\\n", "\n")
        return text.encode("utf-8")
    if args.file == "-":
        return sys.stdin.buffer.read()
    return Path(args.file).read_bytes()


def cmd_decode(args: argparse.Namespace, settings: Settings) -> int:
    """Decodes one payload; see the module docstring for output and exit codes."""
    from connectors.postgres import load_device_registry
    from operators.decode import DecodeError, DecoderRegistry, DeviceInfo, decode_raw_record
    from operators.envelope import RawEnvelope, build_envelope
    from operators.spec_loading import SpecLoadError, load_spec_file

    try:
        loaded = load_spec_file(args.spec)
        devices = load_device_registry(args.device_registry or settings.device_registry)
    except SpecLoadError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_BAD_SPEC
    try:
        payload = _payload_from_args(args, loaded.spec)
    except DecodeError as exc:
        print(f"rejected at {exc.stage} ({exc.code}): {exc.reason}", file=sys.stderr)
        return EXIT_REJECTED
    except OSError as exc:
        print(f"iotlink decode: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    product_id = args.product_id or loaded.decoder.product_id
    if args.tenant is not None or args.device_id not in devices:
        known = devices.get(args.device_id)
        devices[args.device_id] = DeviceInfo(product_id, args.tenant if args.tenant is not None else (known.tenant if known else None))
    registry = DecoderRegistry(by_product={product_id: [loaded.decoder]}, devices=devices)
    received_at = args.received_at if args.received_at is not None else int(time.time() * 1000)
    envelope = RawEnvelope(payload=payload, source="file", received_at=received_at, device_id=args.device_id, product_id=product_id)
    outcome = decode_raw_record(build_envelope(envelope), registry, received_at)
    out = sys.stdout.buffer
    for record in outcome.records:
        out.write(orjson.dumps(record) + b"\n")
    out.flush()
    for letter in outcome.dead_letters:
        print(f"rejected at {letter['stage']} ({letter['reason_code']}): {letter['reason']}", file=sys.stderr)
    return EXIT_REJECTED if outcome.dead_letters else EXIT_OK


def cmd_specs_check(args: argparse.Namespace, settings: Settings) -> int:
    """Validates specs and runs their examples; prints one line per spec plus any problems."""
    from operators.spec_loading import SpecLoadError, duplicate_problems, load_spec_file, run_examples, spec_files

    paths = args.paths or [settings.specs_dir]
    files = spec_files(paths)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        print(f"iotlink specs check: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_BAD_SPEC
    invalid = failed = passed = 0
    loaded_all = []
    for path in files:
        try:
            loaded = load_spec_file(path)
        except SpecLoadError as exc:
            invalid += 1
            print(f"INVALID {path}")
            for problem in exc.problems:
                print(f"  {problem}")
            continue
        loaded_all.append(loaded)
        results = run_examples(loaded)
        bad = [r for r in results if not r.ok]
        passed += len(results) - len(bad)
        failed += len(bad)
        spec = loaded.spec
        layout = f"/{spec.parsing_type}" if getattr(spec, "parsing_type", None) else ""
        status = "FAIL" if bad else "ok"
        if bad or not args.quiet:
            print(
                f"{status:7} {path}  spec {loaded.spec_id} version {loaded.decoder.spec_version}  product {loaded.decoder.product_id}  "
                f"{spec.format}{layout}  examples {len(results) - len(bad)}/{len(results)}"
            )
        for notice in loaded.notices:
            if not args.quiet:
                print(f"  note: {notice}")
        for r in bad:
            print(f"  example {r.name!r}: {r.detail}")
        if not results and not args.quiet:
            print("  note: no examples; add `examples:` so the suite can check this spec")
    for problem in duplicate_problems(loaded_all):
        invalid += 1
        print(f"INVALID {problem}")
    print(f"{len(files)} spec(s): {len(files) - invalid} valid, {invalid} invalid; examples {passed} passed, {failed} failed")
    if invalid:
        return EXIT_BAD_SPEC
    return EXIT_REJECTED if failed else EXIT_OK
