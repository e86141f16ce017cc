"""The Glue job, by concern: ``formats`` (bytes to raw records), ``numbers`` (numbers and times written as
text), ``validation`` (raw records to canonical rows and CSV), ``s3io`` (its S3 requests) and ``job``
(arguments, the window contract, the run). Shipped to Glue's Python 3.9 in one zip with ``layout``
(include/price_pipeline/glue_bundle.py): standard library, boto3 and defusedxml only, no Airflow."""
