"""Stage `prepare`: validate and tokenize the data once; write the label map."""

import json

from textcompress.data import prepare
from textcompress.modeling import resolve_base
from textcompress.stages import run_stage


def main(argv=None):
    def add(parser):
        parser.add_argument("--out", default="artifacts/prepared")

    def body(params, args):
        stats = prepare(params["data"], resolve_base(params["base_model"]) / "tokenizer.json", args.out)
        print(json.dumps({k: v["rows"] for k, v in stats.items() if isinstance(v, dict)}), "rows; labels", stats["labels"])

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
