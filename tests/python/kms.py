"""Makes a key in AWS KMS (moto's server), for Protect's AWSKms key manager.

usage: kms.py ENDPOINT ALIAS

Creates a symmetric key named ALIAS; prints `key=<id>`.
"""
import sys

import boto3

endpoint, alias = sys.argv[1], sys.argv[2]
client = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
key = client.create_key()["KeyMetadata"]["KeyId"]
client.create_alias(AliasName=alias, TargetKeyId=key)
print("key=%s" % key)
