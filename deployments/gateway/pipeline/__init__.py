"""The gateway's request pipeline: from the client's bytes to a decided, admitted request
(middleware, edge admission, limits, the plan and the route, quota hooks), and the answer
on its way out."""
