import cassandra from 'cassandra-driver'
const c = new cassandra.Client({contactPoints:['127.0.0.1'], localDataCenter:'datacenter1'})
await c.connect()
const end = Date.now() + Number(process.argv[2] ?? 0)
do { const rs = await c.execute('SELECT keyspace_name, table_name, kind, progress, total FROM system_views.sstable_tasks'); console.log(new Date().toISOString().slice(11,19), rs.rows.length, rs.rows.map(r=>`${r.table_name}:${r.kind}:${r.progress}/${r.total}`).join(' ')); await new Promise(r=>setTimeout(r,2000)) } while (Date.now() < end)
await c.shutdown()
