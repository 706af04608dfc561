//! What the proxy does with the frames a node sends: answers matched to their requests
//! (rewritten, held back or acted on first), and events.

use super::*;

/// True for a RESULT of kind Schema_change (5).
pub(super) fn is_schema_change(frame: &Bytes, compression: Compression) -> bool {
    let plain = header::frame_flags(frame).is_ok_and(|f| f == 0);
    if plain {
        return frame.get(header::HEADER_LEN..header::HEADER_LEN + 4) == Some(&[0, 0, 0, 5]);
    }
    matches!(
        CassandraFrame::parse(frame, compression).map(|f| f.body),
        Ok(CassandraBody::Result(ResultBody::SchemaChange(_)))
    )
}

impl CassandraSinkCluster {
    /// Handles every frame read from `node`.
    pub(super) fn accept_frames(&mut self, node: SocketAddr) {
        let Some(conn) = self.conns.get_mut(&node) else { return };
        let frames = std::mem::take(&mut conn.frames);
        let compression = conn.compression();
        for frame in frames {
            let Some(conn) = self.conns.get_mut(&node) else { return };
            match conn.answered(&frame) {
                Some(pending) => {
                    if let Err(e) = conn.release_held() {
                        self.fail_node(node, &e.to_string());
                    }
                    self.on_answer(node, pending.purpose, frame, compression)
                }
                None if header::stream_id(&frame).is_ok_and(|s| s < 0) => self.on_event(node, frame, compression),
                None => tracing::debug!("CassandraSinkCluster: an answer from {node} on no known stream"),
            }
        }
    }

    /// An EVENT: schema changes reach a client that registered (on its home connection);
    /// topology and status events are about Cassandra nodes, which the client does not see.
    pub(super) fn on_event(&mut self, node: SocketAddr, frame: Bytes, compression: Compression) {
        if self.home != Some(node) || self.session.register.is_none() {
            return;
        }
        if let Ok(CassandraBody::Event(shotover_protocols::cassandra::response::Event::SchemaChange(_))) =
            CassandraFrame::parse(&frame, compression).map(|f| f.body)
        {
            self.ready.push(Message::from_cql(frame, compression, Instant::now()));
        }
    }

    pub(super) fn on_answer(&mut self, node: SocketAddr, purpose: Purpose, frame: Bytes, compression: Compression) {
        match purpose {
            Purpose::Quiet => {}
            Purpose::Reprepare(request) => {
                if header::opcode(&frame).ok() == Some(Opcode::Result) {
                    let again = request.frame.clone();
                    self.queue_on(node, &again, Purpose::Client(request));
                } else {
                    self.deliver(request, &frame, compression);
                }
            }
            Purpose::Client(request) => self.on_client_answer(node, request, frame, compression),
            Purpose::SchemaVersion(parked) => {
                let version = match CassandraFrame::parse(&frame, compression).map(|f| f.body) {
                    Ok(CassandraBody::Result(ResultBody::Rows(rows))) => {
                        rows.column_index("schema_version").and_then(|c| rows.cell(0, c)).flatten().map(|v| v.to_vec())
                    }
                    _ => None,
                };
                self.park(parked, version);
            }
        }
    }

    /// Holds a schema change answer until the nodes agree on `version` (the version of
    /// the node that ran it), or on any one version when that is unknown.
    pub(super) fn park(&mut self, mut parked: Parked, version: Option<Vec<u8>>) {
        parked.agreement = self.shared.ask_agreement(version);
        self.parked.push(parked);
    }

    /// Queues a frame on `node`'s connection; a failure there fails the connection.
    pub(super) fn queue_on(&mut self, node: SocketAddr, frame: &[u8], purpose: Purpose) {
        let Some(conn) = self.conns.get_mut(&node) else { return };
        if let Err(e) = conn.queue(frame, purpose, Instant::now()) {
            self.fail_node(node, &e.to_string());
        }
    }

    pub(super) fn on_client_answer(
        &mut self,
        node: SocketAddr,
        request: ClientRequest,
        frame: Bytes,
        compression: Compression,
    ) {
        let opcode = header::opcode(&frame).ok();
        if opcode == Some(Opcode::Error) {
            if let Some(again) = self.reprepare(&request, &frame, compression) {
                tracing::info!("CassandraSinkCluster: {node} did not know a prepared statement; prepared it again");
                self.queue_on(node, &again, Purpose::Reprepare(request));
                return;
            }
        }
        match opcode {
            Some(Opcode::AuthSuccess) => {
                self.session.authenticated = true;
                self.shared.offer_session(&self.session);
            }
            Some(Opcode::Ready) if request.header.opcode == Opcode::Startup => self.shared.offer_session(&self.session),
            Some(Opcode::Result) => {
                if let Some(rewritten) = self.on_result(node, &request, &frame, compression) {
                    return self.deliver(request, &rewritten, Compression::None);
                }
                if is_schema_change(&frame, compression) {
                    // The node that ran the change has the new version; the control
                    // connection's node may not have heard of it yet.
                    let until = Instant::now() + AGREEMENT_WAIT;
                    let parked = Parked { request, frame, compression, agreement: 0, until };
                    match self.own_frame(CassandraBody::Query(Query {
                        query: "SELECT schema_version FROM system.local".to_string(),
                        params: QueryParams::new(Consistency::One),
                    })) {
                        Some(ask) => self.queue_on(node, &ask, Purpose::SchemaVersion(parked)),
                        None => self.park(parked, None),
                    }
                    return;
                }
            }
            _ => {}
        }
        self.deliver(request, &frame, compression);
    }

    /// For UNPREPARED on a statement this core has seen prepared: the PREPARE to send first.
    pub(super) fn reprepare(&self, request: &ClientRequest, frame: &Bytes, compression: Compression) -> Option<Bytes> {
        let id = request.prepared_id.as_ref()?;
        let parsed = CassandraFrame::parse(frame, compression).ok()?;
        let CassandraBody::Error(e) = parsed.body else { return None };
        if e.code != ErrorCode::UNPREPARED {
            return None;
        }
        let info = self.shared.prepared.borrow().get(id).cloned()?;
        let prepare =
            CassandraBody::Prepare(Prepare { query: info.query.to_string(), keyspace: info.keyspace.clone() });
        self.own_frame(prepare)
    }

    /// Learns from a RESULT; returns the frame to give the client instead, if rewritten.
    pub(super) fn on_result(
        &mut self,
        node: SocketAddr,
        request: &ClientRequest,
        frame: &Bytes,
        compression: Compression,
    ) -> Option<Bytes> {
        match &request.kind {
            Kind::Plain => {
                // Cheap check first: the result kind is the body's first int (3: Set_keyspace).
                let plain = header::frame_flags(frame).is_ok_and(|f| f == 0);
                if plain && frame.get(header::HEADER_LEN..header::HEADER_LEN + 4) != Some(&[0, 0, 0, 3]) {
                    return None;
                }
                if let Ok(CassandraBody::Result(ResultBody::SetKeyspace(ks))) =
                    CassandraFrame::parse(frame, compression).map(|f| f.body)
                {
                    if let Some(use_ks) = self.use_frame(&ks) {
                        let others: Vec<SocketAddr> = self.conns.keys().filter(|a| **a != node).copied().collect();
                        for other in others {
                            let Some(conn) = self.conns.get_mut(&other) else { continue };
                            if let Err(e) = conn.queue_gate(&use_ks, Purpose::Quiet, Instant::now()) {
                                self.fail_node(other, &e.to_string());
                            }
                        }
                    }
                    self.session.keyspace = Some(ks);
                }
                None
            }
            Kind::Prepare { query, keyspace, system } => {
                let parsed = CassandraFrame::parse(frame, compression).ok()?;
                let CassandraBody::Result(ResultBody::Prepared(prepared)) = &parsed.body else { return None };
                self.remember_prepared(prepared, query, keyspace, system);
                // The other nodes this client uses prepare it too, so that its EXECUTEs can go
                // anywhere without an UNPREPARED round trip.
                let others: Vec<SocketAddr> = self.conns.keys().filter(|a| **a != node).copied().collect();
                for other in others {
                    self.queue_on(other, &request.frame, Purpose::Quiet);
                }
                None
            }
            Kind::System(query, names) => {
                let mut parsed = CassandraFrame::parse(frame, compression).ok()?;
                let CassandraBody::Result(ResultBody::Rows(rows)) = &mut parsed.body else { return None };
                let view = self.shared.view();
                let names = names.as_deref();
                match query.table {
                    SystemTable::Local => self.local_row = system::rewrite_local(rows, query, names, &view.0),
                    SystemTable::Peers | SystemTable::PeersV2 => {
                        system::rewrite_peers(rows, query, names, &view.1, &self.local_row)
                    }
                }
                parsed.encode().ok().map(Bytes::from)
            }
        }
    }

    pub(super) fn remember_prepared(
        &self,
        prepared: &Prepared,
        query: &Rc<str>,
        keyspace: &Option<String>,
        system: &Option<Rc<SystemQuery>>,
    ) {
        let m = &prepared.metadata;
        let table = m
            .global_table_spec
            .as_ref()
            .or_else(|| m.columns.first().and_then(|c| c.table_spec.as_ref()))
            .map(|t| (t.keyspace.clone(), t.table.clone()));
        let names: Rc<[String]> = prepared.result_metadata.columns.iter().map(|c| c.name.clone()).collect();
        let info = PreparedInfo {
            query: query.clone(),
            keyspace: keyspace.clone(),
            table,
            pk_indexes: m.pk_indexes.iter().map(|&i| usize::from(i)).collect(),
            bind_names: m.columns.iter().map(|c| c.name.clone()).collect(),
            system: system.clone().map(|q| (q, names)),
        };
        if let (true, Some((keyspace, table))) = (info.pk_indexes.is_empty() && info.system.is_none(), &info.table) {
            // Looked up now, so that it is known by the first EXECUTE.
            self.shared.partition_key(keyspace, table);
        }
        self.shared.prepared.borrow_mut().insert(prepared.id.clone(), Rc::new(info));
    }

    /// Gives the client its answer, on its own stream id.
    pub(super) fn deliver(&mut self, request: ClientRequest, frame: &[u8], compression: Compression) {
        let frame = node::with_stream(frame, request.header.stream_id);
        let mut message = Message::from_cql(frame, compression, Instant::now());
        message.set_request_id(request.request_id);
        self.ready.push(message);
    }

    /// Delivers the schema change answers whose agreement check is done (or took too long).
    pub(super) fn poll_parked(&mut self, cx: &mut Context<'_>) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let (done, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| self.shared.agreed(p.agreement) || now >= p.until);
        self.parked = waiting;
        for p in done {
            self.deliver(p.request, &p.frame, p.compression);
        }
        if let Some(until) = self.parked.iter().map(|p| p.until).min() {
            self.shared.agreement_waiters.borrow_mut().push(cx.waker().clone());
            let timer = self.parked_timer.get_or_insert_with(|| Timer::new(until.saturating_duration_since(now)));
            if Pin::new(timer).poll(cx).is_ready() {
                self.parked_timer = None;
                cx.waker().wake_by_ref();
            }
        } else {
            self.parked_timer = None;
        }
    }
}
