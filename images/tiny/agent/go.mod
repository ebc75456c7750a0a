module forky/agent

go 1.19
