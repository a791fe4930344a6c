// Callback-style handler (non-async, three arguments).
exports.handler = (event, context, callback) => {
  setTimeout(() => {
    callback(null, { style: "callback", event, request_id: context.awsRequestId });
  }, 10);
};
