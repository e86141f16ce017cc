"""The AWS Glue Python shell job's script (its ScriptLocation): normalize raw price records to the canonical
CSV, quarantine the rest. The job itself is the package ``include.glue.price_glue`` (include/glue/price_glue/job.py
says what it does and takes); Glue puts it on the path from the bundle the job's ``--extra-py-files`` names
(include/price_pipeline/glue_bundle.py), with the key grammar it imports from ``layout``."""

import sys

from include.glue.price_glue.job import main

if __name__ == "__main__":
    sys.exit(main())
