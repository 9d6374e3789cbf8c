"""The gateway's pure rules: roles and the actions they grant, tenant scopes, credentials' formats. No I/O."""
