// Async handler that rejects: Lambda answers 200 + X-Amz-Function-Error.
exports.handler = async () => {
  console.log("node_error about to throw");
  throw new Error("boom from node");
};
