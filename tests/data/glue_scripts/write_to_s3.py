import sys

import boto3

args = dict(zip(sys.argv[1::2], sys.argv[2::2], strict=True))
body = ("written by " + args["--JOB_RUN_ID"]).encode()
boto3.client("s3").put_object(Bucket=args["--bucket"], Key=args["--key"], Body=body)
print("wrote it")
