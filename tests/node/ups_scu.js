// A UPS (or any DIMSE-N) SCU made of dcmjs-dimse, driven by the Python tests (tests/dimse/test_ups_dimse.py).
//
//   node ups_scu.js HOST PORT CALLED_AE CALLING_AE < steps.json
//
// steps.json is a list of requests sent in order on one association, each
//   {"op": "create" | "set" | "get" | "action", "sopClass": UID, "instance": UID,
//    "dataset": {naturalized dcmjs elements}, "actionTypeId": N, "attributes": [keywords for N-GET]}
// and for each response one JSON line is printed:
//   {"op", "status", "errorComment", "dataset"}
// Exit status 0 once the association is closed, 1 on a network error or an association rejected.
'use strict';

const dcmjsDimse = require('dcmjs-dimse');

const { Client, Dataset } = dcmjsDimse;
const { NCreateRequest, NSetRequest, NGetRequest, NActionRequest } = dcmjsDimse.requests;

function readStdin() {
  return new Promise((resolve) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => (text += chunk));
    process.stdin.on('end', () => resolve(text));
  });
}

function buildRequest(step) {
  let request;
  switch (step.op) {
    case 'create':
      request = new NCreateRequest(step.sopClass, step.instance);
      break;
    case 'set':
      request = new NSetRequest(step.sopClass, step.instance);
      break;
    case 'get':
      request = new NGetRequest(step.sopClass, step.instance, step.attributes || []);
      break;
    case 'action':
      request = new NActionRequest(step.sopClass, step.instance, step.actionTypeId);
      break;
    default:
      throw new Error(`unknown op ${step.op}`);
  }
  if (step.dataset) {
    request.setDataset(new Dataset(step.dataset));
  }
  return request;
}

async function main() {
  const [host, port, called, calling] = process.argv.slice(2);
  const steps = JSON.parse(await readStdin());
  const client = new Client();
  let failed = false;
  steps.forEach((step) => {
    const request = buildRequest(step);
    request.on('response', (response) => {
      const dataset = response.getDataset();
      const line = {
        op: step.op,
        status: response.getStatus(),
        errorComment: response.getErrorComment() || '',
        dataset: dataset ? dataset.getElements() : null,
      };
      process.stdout.write(JSON.stringify(line) + '\n');
    });
    client.addRequest(request);
  });
  client.on('associationRejected', (result) => {
    process.stderr.write(`association rejected: ${JSON.stringify(result)}\n`);
    failed = true;
  });
  client.on('networkError', (e) => {
    process.stderr.write(`network error: ${e}\n`);
    failed = true;
  });
  client.on('closed', () => {
    process.exit(failed ? 1 : 0);
  });
  client.send(host, Number(port), calling, called, { associationTimeout: 30000, pduTimeout: 30000 });
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
