"""Stage `prepare`: validate and tokenize the data once, with the teacher's tokenizer (the
fine-tuned teacher's, else the base model's); write the label map."""

import json
import tempfile
from pathlib import Path

from textcompress import catalog
from textcompress.data import describe_skipped, prepare
from textcompress.errors import ParamsError
from textcompress.models.checkpoints import max_positions, resolve_base, tokenizer_file
from textcompress.stages import run_stage


def main(argv=None):
    """Writes the tokenized splits, the label map and the tokenizer to --out."""
    def add(parser):
        parser.add_argument("--out", default=str(catalog.PREPARED))

    def body(params, args):
        key = "teach.finetuned_teacher" if params["teach"]["finetuned_teacher"] else "base_model"
        source = resolve_base(params["teach"]["finetuned_teacher"] or params["base_model"])
        positions = max_positions(source)
        if positions is not None and params["data"]["max_length"] > positions:
            raise ParamsError(args.params, "data.max_length", f"{params['data']['max_length']} exceeds the {positions} "
                              f"positions of {key} ({source})", f"set it to at most {positions}")
        with tempfile.TemporaryDirectory() as scratch:  # where a tokenizer built by AutoTokenizer is written
            stats = prepare(params["data"], tokenizer_file(source, Path(scratch)), args.out)
        print(json.dumps({k: v["rows"] for k, v in stats.items() if isinstance(v, dict) and "rows" in v}), "rows; labels", stats["labels"])
        if said := describe_skipped(stats["skipped_rows"]):
            print(said)

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
