"""Stage `prepare`: validate and tokenize the data once; write the label map."""

import json

from textcompress import catalog
from textcompress.data import prepare
from textcompress.errors import ParamsError
from textcompress.models.encoder import resolve_base
from textcompress.stages import run_stage


def main(argv=None):
    """Writes the tokenized splits, the label map and the tokenizer to --out."""
    def add(parser):
        parser.add_argument("--out", default=str(catalog.PREPARED))

    def body(params, args):
        base = resolve_base(params["base_model"])
        positions = json.loads((base / "config.json").read_text()).get("max_position_embeddings", 512)
        if params["data"]["max_length"] > positions:
            raise ParamsError(args.params, "data.max_length", f"{params['data']['max_length']} exceeds the base model's "
                              f"{positions} positions", f"set it to at most {positions}")
        stats = prepare(params["data"], base / "tokenizer.json", args.out)
        print(json.dumps({k: v["rows"] for k, v in stats.items() if isinstance(v, dict)}), "rows; labels", stats["labels"])

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
