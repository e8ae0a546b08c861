"""`python -m mp4sr.serve --checkpoint C [--host H] [--port P]`: the HTTP service (same as `mp4sr serve`)."""

import argparse
import logging

from mp4sr.serve.commands import serve_command


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mp4sr.serve", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="an exported model folder, best.pt or the run folder that holds it")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve_command(args.checkpoint, args.host, args.port, threads=args.threads, log_level=args.log_level)


if __name__ == "__main__":
    main()
