"""`ladon-run link`: what a payload costs on a link profile (frames, time on air, duty cycle, loss).

    ladon-run link --list
    ladon-run link --profile lora-sf6-bw500 --bytes 5900 --region eu868 [--loss 0.05 --repair 0.1] [--json]
    ladon-run link --profile lora-sf6-bw500 --profile eu868-dr5 --bytes 4000,16600,120000     # a table

Edge subset: Python 3.6-clean. `ladon-run` builds this parser for every command, `mobile` included, so the
planner (and through it the frame codec and its GF(256) tables) is imported only when `link` runs.
"""
import argparse
import json
from typing import Any, Dict, List

from ladon_deploy.cli_support import UsageError
from ladon_deploy.link.profiles import PROFILES, get_profile

DEFAULT_REPAIR = 0.1


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="list the link profiles and exit")
    parser.add_argument("--profile", action="append", default=None, metavar="NAME",
                        help="link profile (repeat for a table): lora-sf6-bw500, eu868-dr5, us915-dr3, wisun-fsk100, "
                             "ble-coded-s8, ideal:37.5kbps, ... (--list shows them all)")
    parser.add_argument("--bytes", default=None, metavar="N[,N...]", help="payload size(s) in bytes")
    parser.add_argument("--region", default=None,
                        help="regional rules: eu868[:SUB-BAND], us915 or none (default: what the profile implies, "
                             "none for raw LoRa)")
    parser.add_argument("--loss", type=float, default=0.0, metavar="Q",
                        help="independent frame loss probability, for the expected cost of recovering from it")
    parser.add_argument("--repair", type=float, default=DEFAULT_REPAIR, metavar="RATIO",
                        help="repair frames sent with the data frames, as a fraction of them")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")


def run_link(args: argparse.Namespace) -> Dict[str, Any]:
    """Prints the answer and returns it."""
    from ladon_deploy.link.plan import cost_table, implied_region, link_cost

    if args.list:
        rows = [{"profile": p.name, "bit_rate": p.bit_rate, "max_frame_payload": p.max_frame_payload,
                 "region": p.region, "description": p.description} for p in PROFILES.values()]
        if args.json:
            print(json.dumps({"profiles": rows}, indent=2))
        else:
            for row in rows:
                print("%-16s %s" % (row["profile"], row["description"]))
        return {"profiles": rows}
    if not args.profile or args.bytes is None:
        raise UsageError("ladon-run link needs --profile and --bytes (or --list)")
    sizes = _sizes(args.bytes)
    profiles = [get_profile(name) for name in args.profile]
    if len(profiles) == 1 and len(sizes) == 1:
        profile = profiles[0]
        cost = link_cost(profile, sizes[0], implied_region(profile, args.region), args.loss, args.repair)
        print(json.dumps(cost, indent=2) if args.json else _describe(cost))
        return cost
    rows = cost_table(profiles, sizes, args.region)
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))
    else:
        print(format_table(rows))
    return {"rows": rows}


def _sizes(text: str) -> List[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError("--bytes takes whole numbers of bytes, e.g. 5900 or 4000,16600, not %r" % text)
    if any(size <= 0 for size in sizes):
        raise UsageError("--bytes must be positive, got %r" % text)
    return sizes


def _describe(cost: Dict[str, Any]) -> str:
    lines = ["%s (%s), region %s" % (cost["profile"], cost["description"], cost["region"]),
             "  %d bytes -> %s" % (cost["payload_bytes"], "%d frames (%d bytes of headers each)" % (
                 cost["frames"], cost["frame_overhead_bytes"]) if cost["frames"] else "one continuous transfer"),
             "  time on air          %.3f s" % cost["airtime_s"]]
    if cost["duty_cycle"] is not None:
        lines.append("  duty cycle %-9s %.1f s of wall time (each frame waits out T (1/dc - 1))"
                     % ("%g%%" % (cost["duty_cycle"] * 100), cost["duty_cycle_wall_s"]))
    if cost["dwell_time_s"] is not None:
        lines.append("  dwell time           %g ms per frame (longest frame %.0f ms)"
                     % (cost["dwell_time_s"] * 1e3, cost["longest_frame_s"] * 1e3))
    lines.append("  payloads per hour    %d (hourly airtime budget %g s)" % (cost["payloads_per_hour"],
                                                                            cost["hourly_airtime_budget_s"]))
    if cost.get("loss"):
        lines.append("  with %g%% loss        %.1f frames, %.3f s on air expected (%d repair frames; %.1f%% need "
                     "no second round)" % (cost["loss"] * 100, cost["expected_frames"], cost["expected_airtime_s"],
                                           cost["repair_frames"], cost["recovered_without_retransmission"] * 100))
    return "\n".join(lines)


def format_table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| profile | region | payload (B) | frames | time on air (s) | duty-cycle wall time (s) | payloads/h |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append("| %s | %s | %d | %d | %.2f | %.1f | %d |" % (
            row["profile"], row["region"], row["payload_bytes"], row["frames"], row["airtime_s"],
            row["duty_cycle_wall_s"], row["payloads_per_hour"]))
    return "\n".join(lines)
