// Async echo: returns the event, context fields and the environment.
const ENV_ID = require("crypto").randomBytes(16).toString("hex");
let count = 0;

exports.handler = async (event, context) => {
  count += 1;
  if (event && event.sleep) {
    await new Promise((resolve) => setTimeout(resolve, event.sleep * 1000));
  }
  if (event && event.print) console.log(event.print);
  return {
    event,
    env_id: ENV_ID,
    count,
    pid: process.pid,
    node: process.version,
    context: {
      function_name: context.functionName,
      function_version: context.functionVersion,
      invoked_function_arn: context.invokedFunctionArn,
      memory_limit_in_mb: String(context.memoryLimitInMB),
      aws_request_id: context.awsRequestId,
      log_group_name: context.logGroupName,
      log_stream_name: context.logStreamName,
      remaining_time_in_millis: context.getRemainingTimeInMillis(),
    },
    env: process.env,
  };
};
