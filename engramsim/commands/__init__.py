"""CLI subcommands; each module has `add_parser(subparsers)` and sets a `handler`. `HELP` is each
one's line in `engramsim --help`, here so the command line lists them without importing their
modules (engramsim/cli.py imports a command's module only when it is chosen)."""

HELP = {
    'hash': 'hash a text file into Engram row ids (NPZ)',
    'trace': 'build, inspect and generate token traces',
    'collisions': 'hashing quality (row collisions per head and over all heads) of hashing plugins on a trace',
    'quality': "relative error of the Engram layer's output with the tables in bf16, fp8, int8 (against fp32), on the scenario's trace",
    'check': 'make every check `run` would, without running; print a one-line summary',
    'schema': 'write the JSON Schema of scenario files',
    'plugins': 'list the strategy plugins and their params',
    'run': 'run a scenario (default: the shipped quickstart)',
    'compare': 'simulate variants of a scenario on the same requests: a table, compare.json/.csv/.png',
    'sweep': 'run a grid of scenario values (process pool or Ray): a results file per point, sweep.csv/.parquet',
    'plot': 'a metric against a key of a sweep or compare folder, one line per --hue value',
    'diff': 'compare results.json files: the metrics and scenario fields that differ',
    'hw': 'print the CPU and NUMA nodes, memory, torch build, GPUs and PCIe links this machine has',
    'calibrate': 'micro-benchmark this machine and write a calibrated hardware profile',
    'validate': 'run scenarios for real and simulated on a profile and report the error',
}
