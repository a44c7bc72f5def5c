"""The options of `edge-classify --camera` beyond the source: output, live view and frame saving.

`live_options` adds them to the command (shown in --help after --camera and --frames),
`check_live_options` refuses the combinations that would ignore part of what was asked, and
`live_run_options` turns the parsed values into `live_run.LiveOptions`. The run itself is
`live_run.run_live`; this module only parses.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:  # live_run loads only for a camera run: `edge-classify photo.jpg` never needs it
    from .live_run import LiveOptions

DEFAULT_SERVE_HOST = "127.0.0.1"
# 8080: the usual unprivileged HTTP port, free on a stock Raspberry Pi OS (nothing there listens on it).
DEFAULT_SERVE_PORT = 8080
DEFAULT_SERVE_FPS = 10.0
# Rule saves a minute: enough to collect a scene's hard cases, few enough that a rule matching every
# frame of a 30 fps camera fills no disk (600 small JPEGs an hour).
DEFAULT_SAVE_PER_MINUTE = 10
TOKEN_ENV_VAR = "EDGE_CLASSIFY_TOKEN"
LIVE_PARAMETERS = ("on_change", "loop", "serve", "serve_fps", "token", "save", "save_when", "save_max")


def _save_rule(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
    if not values:
        return ()
    from .capture import parse_rule

    try:
        return tuple(parse_rule(value) for value in values)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from error


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    """[HOST:]PORT (an IPv6 host in brackets) as (host, port)."""
    if value is None:
        return None
    from .errors import EdgeError
    from .serve.server import parse_address

    try:
        return parse_address(value)
    except EdgeError as error:
        raise click.BadParameter(str(error), ctx, param) from error


def live_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the live-run options to a click command (in --help order)."""
    options = [
        click.option("--on-change", is_flag=True,
                     help="With --camera: a line when the answer changes (and at most once a second for a new "
                          "score or rate) instead of one line per frame."),
        click.option("--loop", is_flag=True, help="With --camera VIDEO: play the video again when it ends."),
        click.option("--serve", is_flag=False, flag_value=f"{DEFAULT_SERVE_HOST}:{DEFAULT_SERVE_PORT}",
                     default=None, metavar="[[HOST:]PORT]", callback=_address,
                     help=f"With --camera: serve the live view (video, answers, JSON API) at "
                          f"http://{DEFAULT_SERVE_HOST}:{DEFAULT_SERVE_PORT}/ or HOST:PORT. Another host than "
                          "loopback needs a token (--token, or one is made and printed). Needs the [serve] extra."),
        click.option("--serve-fps", type=click.FloatRange(min=0.1, max=60), metavar="N",
                     help=f"With --serve: at most N video frames a second to each viewer (default "
                          f"{DEFAULT_SERVE_FPS:g})."),
        click.option("--token", envvar=TOKEN_ENV_VAR, show_envvar=True, metavar="TEXT",
                     help="With --serve: the token every request must carry (Authorization: Bearer, or ?token= "
                          "on the page's first load)."),
        click.option("--save", metavar="DIR",
                     help="With --camera: save frames as DIR/<label>/<time>.jpg (the folders edge-train reads), "
                          "by --save-when rules and from the live view's save control."),
        click.option("--save-when", multiple=True, metavar="RULE", callback=_save_rule,
                     help="With --save: save a frame when the best score is under T (unsure:T) or the answer is "
                          "NAME (label:NAME); repeatable, any rule saves."),
        click.option("--save-max", type=click.IntRange(min=1), metavar="N",
                     help=f"With --save-when: at most N frames saved a minute (default {DEFAULT_SAVE_PER_MINUTE})."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_live_options(camera: str | None, loop: bool, values: dict[str, Any]) -> None:
    """Refuse live options without --camera, or without the option they refine."""
    given = {name: value for name, value in values.items() if value not in (None, False, ())}
    if given.get("token") is not None and given["token"] == os.environ.get(TOKEN_ENV_VAR):
        del given["token"]  # from the environment, set for every run: not asked of this one
    if camera is None and given:
        raise click.UsageError(f"--{next(iter(given)).replace('_', '-')} only applies to --camera")
    for option, needs in (("serve_fps", "serve"), ("token", "serve"), ("save_when", "save"), ("save_max", "save_when")):
        if option in given and needs not in given:
            raise click.UsageError(f"--{option.replace('_', '-')} only applies to --{needs.replace('_', '-')}")
    if "save" in given and "save_when" not in given and "serve" not in given:
        raise click.UsageError("--save needs a --save-when rule, or --serve for the live view's save control")
    if loop and not (camera is not None and os.path.isfile(camera)):
        raise click.UsageError("--loop only applies to --camera with a video file")


def live_run_options(camera: str, camera_auto: str, max_frames: int | None, as_json: bool, top_k: int,
                     threshold: float, output: str | None, values: dict[str, Any]) -> LiveOptions:
    """The parsed options as the LiveOptions of `live_run.run_live`."""
    from .live_run import LiveOptions, SaveOptions, ServeOptions

    save = serve = None
    if values["save"] is not None:
        save = SaveOptions(values["save"], tuple(values["save_when"]), values["save_max"] or DEFAULT_SAVE_PER_MINUTE)
    if values["serve"] is not None:
        host, port = values["serve"]
        serve = ServeOptions(host, port, values["token"] or None, values["serve_fps"] or DEFAULT_SERVE_FPS)
    return LiveOptions(source=None if camera == camera_auto else camera, max_frames=max_frames, as_json=as_json,
                       top_k=top_k, threshold=threshold, on_change=values["on_change"], loop=values["loop"],
                       output=output, save=save, serve=serve)
