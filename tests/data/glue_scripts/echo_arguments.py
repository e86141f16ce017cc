import json
import sys

names, values = sys.argv[1::2], sys.argv[2::2]
print(json.dumps(dict(zip(names, values, strict=True))))
