// hello-node: the smallest useful Node.js function.
exports.handler = async (event, context) => {
  const name = (event && event.name) || "world";
  return {
    message: `Hello, ${name}!`,
    function: context.functionName,
    request_id: context.awsRequestId,
    runtime: process.env.AWS_EXECUTION_ENV,
  };
};
