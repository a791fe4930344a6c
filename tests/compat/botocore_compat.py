#!/usr/bin/env python3
"""botocore_compat.py [BUILD] (BOTOCORE=pip uses the pip botocore instead of the CLI v2 one) - serializes real botocore requests for every
control-plane operation, runs them through control_handle() (via
control_driver, built here against BUILD/libflicker.a), and parses the
responses with botocore's own rest-json parser, as the CLI would.  The
HTTP layer is simulated: the path is percent-decoded, the query string is
encoded as botocore does.  Exits non-zero on any mismatch."""
import base64, io, json, os, subprocess, sys, tempfile, urllib.parse, zipfile

if os.environ.get('BOTOCORE', 'cli2') == 'cli2':
    sys.path.insert(0, '/usr/lib/python3/dist-packages/awscli')
import botocore.session
from botocore import serialize, parsers
from botocore.awsrequest import prepare_request_dict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = sys.argv[1] if len(sys.argv) > 1 else 'build'

def build_driver():
    out = os.path.join(ROOT, BUILD, 'tests', 'control_driver')
    pk = subprocess.check_output(['pkg-config', '--cflags', '--libs', 'jansson', 'sqlite3',
                                  'libcrypto', 'libzip']).decode().split()
    extra = ['-fsanitize=address,undefined'] if 'asan' in BUILD else []
    subprocess.check_call(['cc', '-std=gnu11', '-D_GNU_SOURCE', '-I' + os.path.join(ROOT, 'src')]
                          + extra + ['-o', out, os.path.join(ROOT, 'tests/compat/control_driver.c'),
                                     os.path.join(ROOT, BUILD, 'libflicker.a')] + pk
                          + ['-lpthread', '-lm'])
    return out

session = botocore.session.get_session()
model = session.get_service_model('lambda')
ser = serialize.create_serializer('rest-json', include_validation=False)
parser = parsers.create_parser('rest-json')
failures = 0

def zipbytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        info = zipfile.ZipInfo('bootstrap')
        info.external_attr = (0o100755 << 16)
        z.writestr(info, '#!/bin/sh\necho hi\n')
        z.writestr('app.py', 'def handler(e, c):\n    return 1\n')
    return buf.getvalue()

class Driver:
    def __init__(self, exe, data):
        self.p = subprocess.Popen([exe, data], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    def call(self, op, params):
        om = model.operation_model(op)
        req = ser.serialize_to_request(params, om)
        path = urllib.parse.unquote(req['url_path'].split('?')[0])
        q = req['query_string']
        query = urllib.parse.urlencode(q, doseq=True, quote_via=urllib.parse.quote) if q else None
        if '?' in req['url_path']:
            query = req['url_path'].split('?', 1)[1] + ('&' + query if query else '')
        body = req['body']
        if isinstance(body, (bytes, bytearray)):
            body = body.decode()
        line = json.dumps({'method': req['method'], 'path': path, 'query': query,
                           'body': body or None})
        self.p.stdin.write(line.encode() + b'\n')
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        headers = {'x-amzn-requestid': 'test'}
        if r['error_type']:
            headers['x-amzn-errortype'] = r['error_type']
        raw = json.dumps(r['body']).encode() if r['body'] is not None else b''
        parsed = parser.parse({'status_code': r['status'], 'headers': headers, 'body': raw},
                              om.output_shape)
        return r['status'], parsed
    def close(self):
        self.p.stdin.close()
        self.p.wait()

def expect(name, cond, info=''):
    global failures
    if cond:
        print('PASS', name)
    else:
        failures += 1
        print('FAIL', name, info)

def main():
    exe = build_driver()
    with tempfile.TemporaryDirectory() as data:
        d = Driver(exe, data)
        zb = zipbytes()
        role = 'arn:aws:iam::123456789012:role/r'
        st, r = d.call('CreateFunction', {'FunctionName': 'f', 'Role': role, 'Runtime': 'python3.12',
                                          'Handler': 'app.handler', 'Code': {'ZipFile': zb},
                                          'Environment': {'Variables': {'AB': '1'}},
                                          'Tags': {'t': 'v'}})
        expect('create', st == 201 and r['FunctionName'] == 'f' and r['State'] == 'Active', r)
        import hashlib
        expect('create sha', r.get('CodeSha256') == base64.b64encode(hashlib.sha256(zb).digest()).decode(), r)
        st, r = d.call('CreateFunction', {'FunctionName': 'f', 'Role': role, 'Runtime': 'python3.12',
                                          'Handler': 'app.handler', 'Code': {'ZipFile': zb}})
        expect('create dup', st == 409 and r['Error']['Code'] == 'ResourceConflictException'
               and r['Error']['Message'] == 'Function already exist: f', r)
        arn = 'arn:aws:lambda:us-east-1:123456789012:function:f'
        st, r = d.call('GetFunction', {'FunctionName': arn})
        expect('get by arn', st == 200 and r['Configuration']['FunctionArn'] == arn
               and r['Code']['RepositoryType'] == 'S3' and r['Tags'] == {'t': 'v'}, r)
        st, r = d.call('GetFunction', {'FunctionName': 'nope'})
        expect('get missing', st == 404 and r['Error']['Code'] == 'ResourceNotFoundException'
               and r['Error']['Message'].startswith('Function not found: arn:'), r)
        st, r = d.call('GetFunctionConfiguration', {'FunctionName': 'f', 'Qualifier': '$LATEST'})
        expect('get config $LATEST', st == 200 and r['Version'] == '$LATEST', r)
        st, r = d.call('UpdateFunctionConfiguration', {'FunctionName': 'f', 'MemorySize': 64})
        expect('update validation', st == 400 and r['Error']['Code'] == 'ValidationException', r)
        st, r = d.call('UpdateFunctionConfiguration', {'FunctionName': 'f', 'MemorySize': 256,
                                                       'Timeout': 10})
        expect('update config', st == 200 and r['MemorySize'] == 256, r)
        rev = r['RevisionId']
        st, r = d.call('UpdateFunctionCode', {'FunctionName': 'f', 'ZipFile': zb,
                                              'RevisionId': 'stale'})
        expect('update code stale', st == 412 and r['Error']['Code'] == 'PreconditionFailedException', r)
        st, r = d.call('UpdateFunctionCode', {'FunctionName': 'f', 'ZipFile': zb, 'RevisionId': rev,
                                              'Publish': True})
        expect('update code publish', st == 200 and r['Version'] == '1', r)
        st, r = d.call('PublishVersion', {'FunctionName': 'f', 'Description': 'again'})
        expect('publish unchanged', st == 201 and r['Version'] == '1', r)
        st, r = d.call('ListVersionsByFunction', {'FunctionName': 'f', 'MaxItems': 1})
        expect('list versions', st == 200 and len(r['Versions']) == 1 and 'NextMarker' in r, r)
        st, r = d.call('ListVersionsByFunction', {'FunctionName': 'f', 'Marker': r['NextMarker']})
        expect('list versions page 2', st == 200 and [v['Version'] for v in r['Versions']] == ['1'], r)
        st, r = d.call('CreateAlias', {'FunctionName': 'f', 'Name': 'prod', 'FunctionVersion': '1',
                                       'RoutingConfig': {'AdditionalVersionWeights': {}}})
        expect('create alias', st == 201 and r['AliasArn'] == arn + ':prod', r)
        st, r = d.call('UpdateAlias', {'FunctionName': 'f', 'Name': 'prod', 'Description': 'x',
                                       'RevisionId': r['RevisionId']})
        expect('update alias', st == 200 and r['Description'] == 'x', r)
        st, r = d.call('GetAlias', {'FunctionName': 'f', 'Name': 'prod'})
        expect('get alias', st == 200 and r['FunctionVersion'] == '1', r)
        st, r = d.call('ListAliases', {'FunctionName': 'f'})
        expect('list aliases', st == 200 and len(r['Aliases']) == 1, r)
        st, r = d.call('GetFunction', {'FunctionName': 'f:prod'})
        expect('get via alias', st == 200 and r['Configuration']['Version'] == '1', r)
        st, r = d.call('DeleteFunction', {'FunctionName': 'f', 'Qualifier': '1'})
        expect('delete aliased version', st == 409, r)
        st, r = d.call('DeleteAlias', {'FunctionName': 'f', 'Name': 'prod'})
        expect('delete alias', st == 204, r)
        st, r = d.call('PutFunctionConcurrency', {'FunctionName': 'f',
                                                  'ReservedConcurrentExecutions': 10})
        expect('put concurrency', st == 200 and r['ReservedConcurrentExecutions'] == 10, r)
        st, r = d.call('GetFunctionConcurrency', {'FunctionName': 'f'})
        expect('get concurrency', st == 200 and r['ReservedConcurrentExecutions'] == 10, r)
        st, r = d.call('PutFunctionConcurrency', {'FunctionName': 'f',
                                                  'ReservedConcurrentExecutions': 950})
        expect('put concurrency over', st == 400 and
               r['Error']['Code'] == 'InvalidParameterValueException', r)
        st, r = d.call('GetAccountSettings', {})
        expect('account settings', st == 200 and
               r['AccountLimit']['UnreservedConcurrentExecutions'] == 990 and
               r['AccountUsage']['FunctionCount'] == 1, r)
        st, r = d.call('DeleteFunctionConcurrency', {'FunctionName': 'f'})
        expect('delete concurrency', st == 204, r)
        st, r = d.call('TagResource', {'Resource': arn, 'Tags': {'a': '1', 'b': '2'}})
        expect('tag', st == 204, r)
        st, r = d.call('UntagResource', {'Resource': arn, 'TagKeys': ['a', 't']})
        expect('untag', st == 204, r)
        st, r = d.call('ListTags', {'Resource': arn})
        expect('list tags', st == 200 and r['Tags'] == {'b': '2'}, r)
        for i in range(3):
            d.call('CreateFunction', {'FunctionName': 'g%d' % i, 'Role': role,
                                      'Runtime': 'provided.al2023', 'Code': {'ZipFile': zb}})
        names, marker = [], None
        for _ in range(10):
            p = {'MaxItems': 2}
            if marker:
                p['Marker'] = marker
            st, r = d.call('ListFunctions', p)
            names += [f['FunctionName'] for f in r['Functions']]
            marker = r.get('NextMarker')
            if not marker:
                break
        expect('list functions paging', names == ['f', 'g0', 'g1', 'g2'], names)
        st, r = d.call('ListFunctions', {'FunctionVersion': 'ALL'})
        expect('list functions ALL', st == 200 and len(r['Functions']) == 5, r)
        st, r = d.call('PutFunctionEventInvokeConfig', {'FunctionName': 'f', 'MaximumRetryAttempts': 1,
            'DestinationConfig': {'OnFailure': {'Destination': arn + 'x'}}})
        expect('put event invoke config', st == 200 and r['MaximumRetryAttempts'] == 1
               and r['DestinationConfig']['OnFailure']['Destination'] == arn + 'x', r)
        st, r = d.call('GetFunctionEventInvokeConfig', {'FunctionName': 'f'})
        expect('get event invoke config', st == 200 and r['FunctionArn'] == arn + ':$LATEST'
               and hasattr(r['LastModified'], 'year'), r)
        st, r = d.call('ListFunctionEventInvokeConfigs', {'FunctionName': 'f'})
        expect('list event invoke configs', st == 200 and len(r['FunctionEventInvokeConfigs']) == 1, r)
        st, r = d.call('DeleteFunction', {'FunctionName': arn})
        expect('delete function', st == 204, r)
        st, r = d.call('GetFunction', {'FunctionName': 'f'})
        expect('deleted', st == 404, r)
        d.close()
    print('%d failures' % failures)
    return 1 if failures else 0

sys.exit(main())
