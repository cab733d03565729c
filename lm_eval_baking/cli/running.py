"""`demo`: the main job behind `make demo`."""

from __future__ import annotations

from ..workflows.config import DemoSettings
from .options import add_settings, quiet_libraries, settings_from_args


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the main job: bake, pursue and validate the pirate prompt, then write "
                                            "the report")
    add_settings(demo, DemoSettings)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_run_demo)


def _run_demo(args) -> None:
    settings = settings_from_args(DemoSettings, args)
    quiet_libraries()
    from ..workflows.demo import run_demo

    result = run_demo(settings, progress=not args.quiet)
    print("\nStep times: " + ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items()))
    print(f"Total: {sum(result.seconds.values()) / 60:.1f} min" + (f" (reused: {', '.join(result.reused)})"
                                                                  if result.reused else ""))
    print(f"\nReport: {result.report}\n        {result.report.with_name('report.md')}")
