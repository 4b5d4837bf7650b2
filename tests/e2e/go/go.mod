module holdfast.test/goservice

go 1.22
